"""The daemon (`alice-spool api` and `alice-spool serve`): the parts built from the
settings and run together, the HTTP server, the inbox watcher, the download workers,
retention, and the runners as supervised child processes (`supervisor`)."""
