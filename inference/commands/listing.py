"""``lvm-zoo list``: models, guides, inference methods, ELBO estimators, datasets."""

from __future__ import annotations

import argparse
import json

from inference import api, strategies


def main(args: argparse.Namespace) -> int:
    catalogue = api.catalogue()
    if args.json:
        print(json.dumps(catalogue, indent=2))
        return 0
    print("Models")
    for name, entry in catalogue["models"].items():
        print(f"  {name:<10} {entry['summary']}")
        takes_guide = [n for n in entry["inference"] if catalogue["inference"][n]["takes_guide"]]
        guides = (f"guides (for {', '.join(takes_guide)}): {', '.join(entry['guides'])}"
                  if takes_guide and entry["guides"] else "guides: -")
        print(f"  {'':<10} inference: {', '.join(entry['inference'])}; {guides}; default "
              f"data: {entry['default_data']}")
        print(f"  {'':<10} has: {'; '.join(entry['capabilities']) or '-'}")
        if entry["notes"]:
            print(f"  {'':<10} {entry['notes']}")
    print("\nInference methods (--inference)")
    for name, entry in catalogue["inference"].items():
        flags = ", ".join(strategies.flag(o) for o in entry["options"]) or "no options"
        print(f"  {name:<12} {entry['summary']}; {flags}")
    print("\nELBO estimators (--elbo): " + ", ".join(catalogue["elbo_estimators"]))
    print("\nDatasets: " + ", ".join(catalogue["datasets"])
          + ", synthetic-<model>, or a .csv/.npy/.npz file (rows are observations)")
    return 0
