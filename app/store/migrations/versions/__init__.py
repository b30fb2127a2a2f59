"""One module per schema revision, applied in order by `app.store.migrate.upgrade`."""
