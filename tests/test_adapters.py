"""Dataset adapters on the real files, and every bad-input case with its exact error."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from behavior.adapters import available, load_dataset
from behavior.policies import LoadPolicies
from core.errors import DataError, EmptyHistoryError, IntentRecError, UnknownUserError

ITEMS = """item_id,title,category,category_path,brand,price,colour
A1,Apple Sauce,Canned Fruit,Grocery > Canned Fruit,Mott's,2.49,red
85123A,Honey,,Grocery>Spreads> Honey ,,,
B2,Crushed Ice,Ice,,,1.00,
"""
BEHAVIORS = """user_id,item_id,behavior,timestamp,query,value
u1,A1,purchase,2017-11-03T10:00:00,,2
u1,85123A,buy,2017-11-04,,
u1,B2,cart,20171106T000000,,
u2,A1,search,2017-11-05T12:00:00+02:00,apple sauce,
u2,85123A,fav,2017-11-06T08:00:00Z,,
"""
USERS = """user_id,age,city
u1,34,Leeds
u3,51,
"""


def write(root: Path, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.csv").write_text(text)
    return root


def good(tmp_path: Path, **overrides: str) -> Path:
    files = {"items": ITEMS, "behaviors": BEHAVIORS, "users": USERS}
    files.update(overrides)
    return write(tmp_path / "ds", **files)


def error_of(spec: str, policies: LoadPolicies | None = None) -> DataError:
    with pytest.raises(DataError) as ei:
        load_dataset(spec, policies)
    return ei.value


# ----- the registry ----------------------------------------------------------------------------------
def test_registry_lists_all_adapters_and_rejects_unknown():
    assert available() == ["completejourney", "csv", "movielens", "taobao"]
    with pytest.raises(IntentRecError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# ----- completejourney ----------------------------------------------------------------------------------
def test_completejourney_counts(cj):
    assert cj.users.height == 2469
    assert cj.items.height == 92331
    assert cj.behaviors.height == 1_464_471
    assert cj.report.rows_read == 1_469_307
    assert cj.report.dropped == {"item_not_in_catalogue": 4836}
    assert cj.behaviors["behavior"].unique().to_list() == ["purchase"]
    with_demo = cj.users.filter(pl.col("attributes") != "{}").height
    assert with_demo == 801


def test_completejourney_item_text_and_ids(cj):
    it = cj.item("1000050")
    assert it.title == "Kids Cereal, 14.5 oz"
    assert it.category == "Cold Cereal"
    assert it.category_path == ["Grocery", "Cold Cereal", "Kids Cereal"]
    assert it.attributes["package_size"] == "14.5 OZ"
    code = cj.item_codes.code("1000050")
    assert cj.item_codes.id(code) == "1000050"
    h = cj.history("1000")
    assert h.height == 1219
    assert h["ts"].is_sorted()


def test_history_errors(cj):
    with pytest.raises(UnknownUserError, match="unknown user 'no-such-household'"):
        cj.history("no-such-household")
    with pytest.raises(EmptyHistoryError, match="no behaviour before 2016-01-01"):
        cj.history("1000", before=datetime(2016, 1, 1))


# ----- taobao ------------------------------------------------------------------------------------------
def test_taobao_sample(taobao):
    assert taobao.users.height == 815
    assert taobao.items.height == 55368
    counts = dict(taobao.behaviors["behavior"].value_counts().iter_rows())
    assert counts == {"view": 75872, "cart": 4497, "favorite": 2356, "purchase": 1750}
    # the sample's last line is cut short (no timestamp, no newline): dropped and counted
    assert taobao.report.rows_read == 84476
    assert taobao.report.dropped == {"truncated_last_line": 1}
    assert taobao.report.mapped_types == {"buy": "purchase", "fav": "favorite", "pv": "view"}
    it = taobao.item("2268318")
    assert it.title == "item 2268318 in category 2520377"
    assert it.category == "2520377"
    first = taobao.history("1").row(0, named=True)
    assert first["ts"] == datetime(2017, 11, 24, 17, 21, 10)


def _taobao_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ub.csv"
    p.write_text(text)
    return p


def test_taobao_unknown_type_policies(tmp_path):
    p = _taobao_file(tmp_path, "1,10,5,pv,1511544070\n1,11,5,share,1511544071\n2,10,5,buy,1511544072\n"
                               "2,12,6,share,1511544073\n")
    mapped = load_dataset(f"taobao:{p}")  # 'share' has no alias: dropped and counted
    assert mapped.behaviors.height == 2
    assert mapped.report.dropped == {"unknown_behavior_type": 2}
    assert "'share' x2" in mapped.report.notes[0]
    dropped = load_dataset(f"taobao:{p}", LoadPolicies(unknown_type="drop"))
    assert dropped.report.dropped == {"unknown_behavior_type": 2}
    assert sorted(dropped.behaviors["behavior"].to_list()) == ["purchase", "view"]
    e = error_of(f"taobao:{p}", LoadPolicies(unknown_type="fail"))
    assert (e.file, e.row) == (str(p), 2)
    assert "unknown behaviour type 'share'" in str(e)


def test_taobao_bad_rows(tmp_path):
    p = _taobao_file(tmp_path, "1,10,5,pv,1511544070\n,11,5,pv,1511544071\n")
    assert str(error_of(f"taobao:{p}")) == f"{p}:row 2: missing or empty user_id"
    p = _taobao_file(tmp_path, "1,10,5,pv,1511544070\n1,11,5,pv,yesterday\n")
    e = error_of(f"taobao:{p}")
    assert (e.row, e.problem.split(" (")[0]) == (2, "unparseable timestamp 'yesterday'")
    p = _taobao_file(tmp_path, "1,10,5,pv,1511544070\n1,11,5,pv\n1,12,5,pv,1511544071\n")  # short, not last
    assert str(error_of(f"taobao:{p}")) == f"{p}:row 2: missing timestamp"
    p = _taobao_file(tmp_path, "1,10,5,pv,1511544070\n1,11,5,pv,1511544071,extra\n")
    assert str(error_of(f"taobao:{p}")) == f"{p}:row 2: expected 5 fields, found 6"
    assert "file not found" in str(error_of(f"taobao:{tmp_path / 'missing.csv'}"))


# ----- movielens ---------------------------------------------------------------------------------------
def test_movielens(movielens):
    assert movielens.users.height == 610
    assert movielens.items.height == 9742
    assert movielens.behaviors.height == 100836
    counts = dict(movielens.behaviors["behavior"].value_counts().iter_rows())
    assert counts == {"favorite": 48580, "review": 52256}  # rating >= 4.0 -> favorite
    assert movielens.behaviors.filter(pl.col("behavior") == "favorite")["value"].min() == 4.0
    assert movielens.behaviors.filter(pl.col("behavior") == "review")["value"].max() == 3.5
    tags = movielens.reference_tags
    assert tags is not None and tags.height == 3683
    assert tags["user_id"].n_unique() == 58
    assert tags.row(0, named=True)["tag"] == "funny"
    toy = movielens.item("1")
    assert toy.title == "Toy Story (1995)"
    assert toy.category == "Adventure"
    assert toy.category_path == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy.attributes == {"genres": "Adventure|Animation|Children|Comedy|Fantasy", "year": "1995"}


def test_movielens_missing_movie_policies(tmp_path):
    root = write(tmp_path / "ml", movies="movieId,title,genres\n1,Heat (1995),Action|Crime\n",
                 ratings="userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,99,2.0,964982704\n",
                 tags="userId,movieId,tag,timestamp\n1,1,slow burn,964982705\n1,99,weird,964982706\n")
    d = load_dataset(f"movielens:{root}")
    assert d.report.dropped == {"item_not_in_catalogue": 1, "tag_item_not_in_catalogue": 1}
    assert d.behaviors.row(0, named=True)["behavior"] == "favorite"
    p = load_dataset(f"movielens:{root}", LoadPolicies(missing_item="placeholder"))
    assert p.behaviors.height == 2 and p.report.placeholders == 1  # the tag then finds the placeholder
    assert p.reference_tags is not None and p.reference_tags.height == 2
    assert p.item("99").title == "Unknown item 99"
    e = error_of(f"movielens:{root}", LoadPolicies(missing_item="fail"))
    assert (e.file, e.row) == (str(root / "ratings.csv"), 3)


# ----- csv: the generic schema -------------------------------------------------------------------------
def test_csv_generic_loads(tmp_path):
    d = load_dataset(f"csv:{good(tmp_path)}")
    assert d.name == "csv:ds"
    assert d.users["user_id"].to_list() == ["u1", "u2", "u3"]
    assert d.user("u1").attributes == {"age": "34", "city": "Leeds"}
    a1 = d.item("A1")
    assert (a1.brand, a1.price, a1.attributes) == ("Mott's", 2.49, {"colour": "red"})
    honey = d.item("85123A")
    assert honey.category_path == ["Grocery", "Spreads", "Honey"] and honey.category == "Honey"
    ice = d.item("B2")
    assert ice.category_path == ["Ice"] and ice.price == 1.0
    b = {(r["user_id"], r["item_id"]): r for r in d.behaviors.iter_rows(named=True)}
    assert b[("u1", "A1")]["value"] == 2.0
    assert b[("u1", "85123A")]["behavior"] == "purchase"  # 'buy' mapped
    assert b[("u1", "85123A")]["ts"] == datetime(2017, 11, 4)
    assert b[("u1", "B2")]["ts"] == datetime(2017, 11, 6)  # ISO basic
    assert b[("u2", "A1")]["ts"] == datetime(2017, 11, 5, 10)  # +02:00 converted to UTC
    assert b[("u2", "A1")]["query"] == "apple sauce"
    assert b[("u2", "85123A")]["behavior"] == "favorite"
    assert d.report.mapped_types == {"buy": "purchase", "fav": "favorite"}
    with pytest.raises(EmptyHistoryError, match="'u3'"):
        d.history("u3")  # listed in users.csv, no behaviour
    with pytest.raises(UnknownUserError):
        d.history("u9")


def test_csv_without_users_file(tmp_path):
    root = write(tmp_path / "ds", items=ITEMS, behaviors=BEHAVIORS)
    d = load_dataset(f"csv:{root}")
    assert d.users.height == 2 and json.loads(d.users["attributes"][0]) == {}


BAD_CASES = [
    # (file to replace, its text, file in the message, row, problem)
    ("items", "item_id,name\nA1,x\n", "items.csv", 1, "missing column 'title'; the header has: item_id, name"),
    ("behaviors", "user_id,item_id,behavior\nu1,A1,purchase\n", "behaviors.csv", 1,
     "missing column 'timestamp'; the header has: user_id, item_id, behavior"),
    ("items", "item_id,title\nA1,x\n  ,y\n", "items.csv", 3, "missing or empty item_id"),
    ("items", "item_id,title\nA1,x\nA1,y\n", "items.csv", 3, "duplicate item_id 'A1' (first on row 2)"),
    ("items", "item_id,title,price\nA1,x,cheap\n", "items.csv", 2, "unparseable price 'cheap' (expected a number)"),
    ("behaviors", "user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03\n,A1,cart,2017-11-03\n",
     "behaviors.csv", 3, "missing or empty user_id"),
    ("behaviors", "user_id,item_id,behavior,timestamp\nu1,,purchase,2017-11-03\n", "behaviors.csv", 2,
     "missing or empty item_id"),
    ("behaviors", "user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03\nu1,A1,cart,03/11/2017\n",
     "behaviors.csv", 3,
     "unparseable timestamp '03/11/2017' (expected ISO-8601 such as 2017-11-03T14:22:05 or 20171103, "
     "or unix seconds/milliseconds/microseconds)"),
    ("behaviors", "user_id,item_id,behavior,timestamp\nu1,A1,purchase,\n", "behaviors.csv", 2, "missing timestamp"),
    ("behaviors", "user_id,item_id,behavior,timestamp,value\nu1,A1,review,2017-11-03,five\n", "behaviors.csv", 2,
     "unparseable value 'five' (expected a number)"),
    ("behaviors", "user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03,x\n", "behaviors.csv", 2,
     "expected 4 fields, found 5"),
    ("behaviors", 'user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03\nu1,"A\n1",cart,2017-11-03\n'
     "u1,A1,cart,never\n", "behaviors.csv", 5, "unparseable timestamp 'never'"),
    ("users", "user_id,age\nu1,3\nu1,4\n", "users.csv", 3, "duplicate user_id 'u1' (first on row 2)"),
    ("behaviors", "", "behaviors.csv", 1, "the file is empty (no header row)"),
]


@pytest.mark.parametrize(("name", "text", "file", "row", "problem"), BAD_CASES,
                         ids=[f"{c[0]}-{c[4][:30]}" for c in BAD_CASES])
def test_csv_bad_input_names_file_row_and_problem(tmp_path, name, text, file, row, problem):
    root = good(tmp_path, **{name: text})
    e = error_of(f"csv:{root}")
    assert e.file == str(root / file)
    assert e.row == row
    assert e.problem.startswith(problem)
    assert str(e).startswith(f"{root / file}:row {row}: {problem}")


def test_csv_missing_item_policies(tmp_path):
    beh = "user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03\nu1,ZZ,purchase,2017-11-04\n" \
          "u2,ZZ,cart,2017-11-05\n"
    root = good(tmp_path, behaviors=beh)
    d = load_dataset(f"csv:{root}")  # default: drop, counted
    assert d.behaviors.height == 1 and d.report.dropped == {"item_not_in_catalogue": 2}
    assert d.users.height == 2  # u1 from behaviours, u3 from users.csv; u2 lost all its rows
    p = load_dataset(f"csv:{root}", LoadPolicies(missing_item="placeholder"))
    assert p.behaviors.height == 3 and p.report.placeholders == 2
    assert p.item("ZZ").attributes == {"placeholder": "true"}
    e = error_of(f"csv:{root}", LoadPolicies(missing_item="fail"))
    assert str(e).startswith(f"{root / 'behaviors.csv'}:row 3: item 'ZZ' is not in the catalogue")


def test_csv_unknown_type_policies(tmp_path):
    beh = "user_id,item_id,behavior,timestamp\nu1,A1,Purchase,2017-11-03\nu1,A1,share,2017-11-04\n" \
          "u1,B2,ORDER,2017-11-05\n"
    root = good(tmp_path, behaviors=beh)
    m = load_dataset(f"csv:{root}")
    assert sorted(m.behaviors["behavior"].to_list()) == ["purchase", "purchase"]  # ORDER -> purchase
    assert m.report.dropped == {"unknown_behavior_type": 1}
    d = load_dataset(f"csv:{root}", LoadPolicies(unknown_type="drop"))  # the alias ORDER is still mapped
    assert d.behaviors["behavior"].to_list() == ["purchase", "purchase"]
    assert d.report.dropped == {"unknown_behavior_type": 1}
    e = error_of(f"csv:{root}", LoadPolicies(unknown_type="fail"))
    assert (e.row, e.problem.split(" (")[0]) == (3, "unknown behaviour type 'share'")
    custom = load_dataset(f"csv:{root}", LoadPolicies(unknown_type="fail",
                                                      weights={"purchase": 1.0, "share": 0.4, "order": 1.0}))
    assert sorted(custom.behaviors["behavior"].to_list()) == ["order", "purchase", "share"]


def test_csv_truncated_last_line_is_dropped_and_counted(tmp_path):
    root = good(tmp_path, behaviors="user_id,item_id,behavior,timestamp\nu1,A1,purchase,2017-11-03\nu1,B2")
    d = load_dataset(f"csv:{root}")
    assert d.behaviors.height == 1
    assert d.report.rows_read == 2 and d.report.dropped == {"truncated_last_line": 1}


def test_csv_location_errors(tmp_path):
    assert "needs a location" in str(error_of("csv"))
    assert str(error_of(f"csv:{tmp_path / 'nowhere'}")).startswith(f"{tmp_path / 'nowhere'}: not a directory")
    root = write(tmp_path / "only_items", items=ITEMS)
    assert str(error_of(f"csv:{root}")) == f"{root / 'behaviors.csv'}: file not found"


# ----- timestamp columns: one format per column ---------------------------------------------------------
def _beh(*stamps: str) -> str:
    return "user_id,item_id,behavior,timestamp\n" + "".join(f"u1,A1,purchase,{t}\n" for t in stamps)


@pytest.mark.parametrize(("stamps", "expected"), [
    (("20170903", "20170905"), [datetime(2017, 9, 3), datetime(2017, 9, 5)]),  # ISO basic, not 1970
    (("20170903", "20170905T101500"), [datetime(2017, 9, 3), datetime(2017, 9, 5, 10, 15)]),
    (("1509926400", "1509926401"), [datetime(2017, 11, 6), datetime(2017, 11, 6, 0, 0, 1)]),  # seconds
    (("1509926400000", "1509926400500"), [datetime(2017, 11, 6), datetime(2017, 11, 6, 0, 0, 0, 500_000)]),
    (("1509926400000000",), [datetime(2017, 11, 6)]),  # microseconds
])
def test_timestamp_formats_are_detected_per_column(tmp_path, stamps, expected):
    ds = load_dataset(f"csv:{good(tmp_path, behaviors=_beh(*stamps))}")
    assert ds.behaviors.sort("ts")["ts"].to_list() == expected


def test_timestamp_unit_override(tmp_path):
    root = good(tmp_path, behaviors=_beh("1509926400000"))
    assert load_dataset(f"csv:{root}", LoadPolicies(timestamp_unit="ms")).behaviors["ts"].to_list() == \
        [datetime(2017, 11, 6)]
    e = error_of(f"csv:{root}", LoadPolicies(timestamp_unit="s"))  # milliseconds read as seconds
    assert e.row == 2 and "read as unix s is outside the supported range 1970-01-01 to 2100-01-01" in e.problem
    root2 = good(tmp_path / "b", behaviors=_beh("20170903"))
    assert load_dataset(f"csv:{root2}", LoadPolicies(timestamp_unit="s")).behaviors["ts"].to_list() == \
        [datetime(1970, 8, 22, 11, 1, 43)]  # asked for: the override wins over the basic-date guess
    e = error_of(f"csv:{good(tmp_path / 'c', behaviors=_beh('1509926400'))}", LoadPolicies(timestamp_unit="iso"))
    assert e.row == 2 and e.problem.startswith("unparseable timestamp '1509926400' (expected ISO-8601")


@pytest.mark.parametrize(("stamps", "row", "problem"), [
    (("1509926400", "-5"), 3, "timestamp '-5' read as unix s is outside the supported range"),
    (("1509926400", "1509926400", "2017-11-03"), 4,
     "unparseable timestamp '2017-11-03' (the column holds unix epoch numbers (detected); one format per column)"),
    (("2017-11-03", "2017-11-04", "1509926400"), 4, "unparseable timestamp '1509926400' (expected ISO-8601"),
    (("99999999999999999999",), 2, "timestamp '99999999999999999999' is too large for unix seconds"),
    (("2017-11-03", "2117-11-03"), 3, "timestamp '2117-11-03' is outside the supported range 1970-01-01"),
])
def test_timestamp_errors_name_the_row(tmp_path, stamps, row, problem):
    e = error_of(f"csv:{good(tmp_path, behaviors=_beh(*stamps))}")
    assert e.file.endswith("behaviors.csv") and e.row == row
    assert e.problem.startswith(problem), e.problem


def test_documented_alias_is_known_under_every_policy(tmp_path):
    root = good(tmp_path, behaviors="user_id,item_id,behavior,timestamp\nu1,A1,buy,2017-11-03\n"
                                    "u1,A1,share,2017-11-04\n")
    e = error_of(f"csv:{root}", LoadPolicies(unknown_type="fail"))
    assert e.row == 3 and e.problem.startswith("unknown behaviour type 'share'")
    d = load_dataset(f"csv:{root}", LoadPolicies(unknown_type="drop"))
    assert d.behaviors["behavior"].to_list() == ["purchase"] and d.report.dropped == {"unknown_behavior_type": 1}
