#!/usr/bin/env bash
# Joinery against the tools a linkage team would otherwise pick — clkhash +
# anonlink (privacy-preserving, CLKs) and Splink (cleartext, Fellegi-Sunter) —
# on the same data in the same run: FEBRL 4 and joinery synth output.
# The peers go into a throwaway virtualenv, removed afterwards.
#
#   scripts/compare-linkage.sh [--synth-children N] [--synth-reach SHARE] [--synth-profile messy|tidy]
#     [--datasets febrl4,synth,febrl-scaled] [--febrl-scaled-records N] [--tools joinery,anonlink,...]
#   (--synth-children 800000 --synth-reach 0.625: council and CAMHS 500k each;
#    --datasets febrl-scaled: FEBRL 4's values recombined, 500k + 500k records)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d -t joinery-compare-XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  recordlinkage==0.16 clkhash==0.18.3 anonlink==0.15.3 splink==5.0.0
cargo build --release --quiet
"$work/venv/bin/python" scripts/compare_linkage.py \
  --joinery target/release/joinery --work "$work" "$@"
