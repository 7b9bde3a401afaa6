"""Model downloads: the rules a downloaded file must pass before it is
installed (`files`), one resumable transfer into `<models>/.downloads/<id>/`
(`transfer`), and the worker that takes queued downloads from the store and runs them
(`worker`). Never imports torch."""
