"""Shares of the proxy's CPU by where the sampled frame (the stack's leaf) belongs, from inferno's
folded stacks: `python3 bench/flame_share.py stacks.folded`."""
import re
import sys

# First match wins; the leaf frame's name is tested.
KINDS = [
    ("kernel (TCP/IP, syscalls, scheduler)", r"_\[k\]$"),
    ("memcpy/memmove (libc)", r"mem(cpy|move|set)"),
    ("malloc/free (libc)", r"malloc|_int_free|\bfree\b|cfree|realloc|consolidate"),
    ("TLS: rustls and AES-GCM/aws-lc", r"rustls|aws_lc|aesni|gcm|aes_hw|ghash|sha\d|tokio_rustls"),
    ("HTTP/2: h2", r"^h2::|<h2::"),
    ("HTTP/1.1 and dispatch: hyper, hyper-util, httparse, http", r"hyper|httparse|^http::|<http::"),
    ("tokio (scheduler, I/O driver, timers, sync)", r"tokio"),
    ("trustgate", r"trustgate"),
]


def main(path):
    shares = {}
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        kind = next((k for k, pattern in KINDS if re.search(pattern, leaf)), "other (std, core, libc, vdso)")
        shares[kind] = shares.get(kind, 0) + int(count)
        total += int(count)
    for kind, count in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{100 * count / total:5.1f} %  {kind}")


if __name__ == "__main__":
    main(sys.argv[1])
