"""target-postgres with a faster load path; see target.py."""
