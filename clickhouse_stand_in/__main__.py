"""``python -m clickhouse_stand_in --data DIR ...``: the stand-in in this process."""

from clickhouse_stand_in.server import main

if __name__ == "__main__":
    main()
