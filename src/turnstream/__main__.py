from turnstream.cli import main

raise SystemExit(main())
