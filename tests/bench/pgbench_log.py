"""Read pgbench per-transaction logs (`pgbench -l --log-prefix=PREFIX`).

Each line: client_id transaction_no latency_us script_no epoch_s epoch_us [lag].
"""
import glob
import os


def load(directory, prefix):
    """(end time in epoch seconds, latency in ms) of every logged transaction."""
    out = []
    for f in glob.glob(os.path.join(directory, prefix + ".*")):
        for line in open(f):
            p = line.split()
            if len(p) >= 6 and p[2].isdigit():
                out.append((int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000.0))
    return out


def pct(values, q):
    """The q-quantile (0..1) of values, NaN when empty."""
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")
