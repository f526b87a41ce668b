"""Operator jobs run by RQ beside the matching path (archive, audits, statements)."""
