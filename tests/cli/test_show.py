"""`nvc show`'s split of each study's best into warm start and sampler (db.queries.search_split), from a FakeTimer
tune through the CLI, and its config labels."""
import dataclasses

from sqlalchemy import create_engine, text

from db.queries import search_split, split_summary
from db.storage import open_engine, resolve_url
from kernels.config import Config
from nvc_cli.tables import _short
from tests.cli.test_cli import nvc


def test_show_says_where_each_best_came_from_and_old_rows_read_unknown(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    r = nvc("tune", "--gpu", "h100", "--shapes", "96x64", "--m", "1,4", "--dtype", "float16", "--trials", "16",
            "--patience", "0", "--storage", url)
    assert r.exit_code == 0, r.output
    split = search_split(open_engine(url, create=False))
    assert len(split) == 2 and set(split["best_from"]) <= {"warm_start", "sampler"}
    lines = nvc("show", "--storage", url).stdout.strip().splitlines()
    assert lines[0].split()[-3:] == ["from", "gain%", "at"] and len(lines) == 4
    for line, s in zip(lines[1:3], split.itertuples()):  # both sorted by M
        gain = "-" if s.gain != s.gain else f"{100 * s.gain:+.1f}"
        assert line.split()[-3:] == [{"warm_start": "warm"}.get(s.best_from, s.best_from), gain,
                                     f"{s.best_step}/{s.trials}"]
    assert lines[3].startswith(split_summary(split) + " (from: where the best config came from")

    engine = create_engine(resolve_url(url))
    with engine.begin() as c:  # as a database migrated from schema 3 holds them
        c.execute(text("UPDATE nvc_measurements SET origin = NULL"))
    engine.dispose()
    lines = nvc("show", "--storage", url).stdout.strip().splitlines()
    assert all(line.split()[-3:-1] == ["unknown", "-"] for line in lines[1:3])
    assert lines[3].startswith("the best config was a warm start in 0 of 2 studies, of unknown origin (measured "
                               "before schema 4) in 2")


def test_config_labels_tell_the_eviction_hint_and_gemv_tiles_apart():
    gemv = Config(BLOCK_M=4, BLOCK_N=16, BLOCK_K=128, num_warps=1, num_stages=6, EVICT=1)
    assert _short(gemv) == "4x16x128 gemv w1 s6 g8 sk1 ssq0 tma0 ev1"
    assert _short(dataclasses.replace(gemv, EVICT=0)).endswith(" ev0")
    assert "gemv" not in _short(Config(BLOCK_M=16))
