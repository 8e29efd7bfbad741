"""Start and stop a scratch PostgreSQL 16 + pgvector for tests/retrieval_pg.rs.

Uses the binaries bundled in the `pgserver` wheel (tests/pg/requirements.txt, `make pg-venv`), not
its Python server object: the tests need to stop the server mid-request and start it again on the
same loopback port, which plain `initdb` / `pg_ctl` do.

    pgctl.py start DATADIR PORT [NAME=VALUE ...]  # initdb on first use, then start on 127.0.0.1:PORT
                                                 # (trust auth; NAME=VALUE: server settings)
    pgctl.py stop DATADIR         # immediate shutdown (as if the machine went away)
    pgctl.py bin                  # prints the directory of the bundled binaries (psql, ...)

Run as root (CI here), initdb refuses to work, so the server runs as a system user `pgserver`
(created once, as the wheel's own helper does); the data directory's parents get o+x and the
bundled binaries o+rx so that user can reach them. Every step is idempotent.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import warnings

warnings.simplefilter("ignore")  # pgserver's import warns about XDG_RUNTIME_DIR; not used here
from pgserver._commands import POSTGRES_BIN_PATH  # noqa: E402  (only the bundled binaries)

USER = "pgserver"


def as_user():
    """(uid, gid) to run the server as, or None when not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        e = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", USER], check=True)
        e = pwd.getpwnam(USER)
    return e.pw_uid, e.pw_gid


def open_path(path: Path, bits: int):
    """Adds `bits` to every directory from `path` up to /."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if mode & bits != bits:
            p.chmod(mode | bits)


def open_tree(root: Path):
    """Lets every user read and run the bundled installation."""
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            p.chmod(p.stat().st_mode | 0o055)
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o044 | (0o011 if p.stat().st_mode & stat.S_IXUSR else 0))


def run(cmd, user, **kw):
    def demote():
        if user is not None:
            os.setgid(user[1])
            os.setuid(user[0])

    return subprocess.run(cmd, preexec_fn=demote, check=True, **kw)


def start(data: Path, port: int, settings=()):
    user = as_user()
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        open_path(data.parent, 0o011)
        open_path(POSTGRES_BIN_PATH.parent, 0o055)
        open_tree(POSTGRES_BIN_PATH.parent)
        os.chown(data, *user)
    data.chmod(0o700)
    if not (data / "PG_VERSION").exists():
        run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C"], user, stdout=subprocess.DEVNULL)
    # fsync off: a scratch server; the data of a killed test server need not survive.
    opts = f"-h 127.0.0.1 -p {port} -k '' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    for s in settings:
        name, _, value = s.partition("=")
        if not name or not value or not all(c.isalnum() or c in "._" for c in name + value):
            sys.exit(f"pgctl.py: setting {s!r}: expected NAME=VALUE (letters, digits, . and _)")
        opts += f" -c {name}={value}"
    run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60",
         "-o", opts, "start"], user, stdout=subprocess.DEVNULL)


def stop(data: Path):
    data = data.resolve()
    if not (data / "postmaster.pid").exists():
        return
    run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], as_user(),
        stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "start":
        start(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 2 and sys.argv[1] == "bin":
        print(POSTGRES_BIN_PATH)
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
