"""The book's machinery: :mod:`npga.book.runner` executes the chapters with papermill
(cached) and builds the HTML; :mod:`npga.book.tools` holds ``show_source`` and the
environment report the chapters use."""
