"""Files as a model reads them: text decoded, PDFs' text extracted, within bounds.

Independent of the rest of turnstream (it knows the domain and nothing else, like the
providers and the tools beside it): the use cases read a file's bytes from the store
and call :func:`model_attachment` to get what the provider is handed.
"""

from __future__ import annotations

from turnstream.files.extract import model_attachment, pdf_text, text_of

__all__ = ["model_attachment", "pdf_text", "text_of"]
