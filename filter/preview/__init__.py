"""`rerender preview`: a local web page that shows the input and the output side by side while they render.

The CLI dispatches to `main(argv)`; the page's files (index.html, app.js, style.css) ship as package data.
"""

from .cli import main

__all__ = ["main"]
