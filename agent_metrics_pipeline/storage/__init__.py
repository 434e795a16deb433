"""Storage: where published days go and how they are staged before that. The CSV IO managers
(one object per day, in S3 through dagster-aws or in a local folder with the same keys), the
published table's columns and bytes, and the days a run stages on local disk until every one
of them passed its checks.

May import the foundations (``core``) only.
"""
