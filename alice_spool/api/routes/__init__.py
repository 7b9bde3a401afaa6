"""The native routes: jobs and batches (`native`), health and metrics (`status`), keys,
invites and sessions (`auth`), the Admin page (`admin`), the gallery, the installed
models (`catalog`), downloads and model search."""
