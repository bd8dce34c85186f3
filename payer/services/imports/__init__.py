"""Load a plan's own data into the systems of record: FHIR clinical records (``fhir``) and a
claims extract (``claims``). Both count every item they read into one ``ImportReport``."""
