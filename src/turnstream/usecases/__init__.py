"""The use cases: the turn lifecycle, conversations and usage, over store, bus and views."""
