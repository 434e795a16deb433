"""Data quality: the in-step checks that decide, before anything is published, whether a day
may be. One function per check, judging every day of a chunk at once; those on the source's
counts apart, and a day's volume against its usual one apart again; what they hold as evidence,
what they find and each day's verdict.

May import the foundations (``core``), storage (``storage``, for the published columns) and the
aggregation (``aggregate``), whose rows they judge.
"""
