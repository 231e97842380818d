"""Running and recording: the papermill runner and index.html, notebook helpers, audit, input checks, CLI, charts."""
