"""Rebuild this folder's data files from a git copy of posteriordb (not shipped in the wheel).

    python zoo/posteriordb/data/make_data.py /path/to/posteriordb.git

For every posterior of the suite it writes, from posteriordb's ``posterior_database/``:

- ``<data_name>.json``: the data set (only the fields the Stan program reads), unchanged;
- ``<reference_posterior_name>.json``: the parameter names, and the mean and sd of every
  parameter over all reference draws (10 chains x 1000 draws), in float64;
- ``<reference_posterior_name>.draws.csv``: every 10th reference draw (1000 draws spread over
  all chains), 6 significant digits.

It needs only the standard library and git; the commit it read is written to ``SOURCE``.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIN = 10  # keep every 10th reference draw: 10 chains x 1000 draws -> 1000

# posterior name -> the data fields its Stan program reads
SUITE = {
    "eight_schools-eight_schools_noncentered": ("J", "y", "sigma"),
    "eight_schools-eight_schools_centered": ("J", "y", "sigma"),
    "arK-arK": ("K", "T", "y"),
    "arma-arma11": ("T", "y"),
    "garch-garch11": ("T", "y", "sigma1"),
    "hmm_example-hmm_example": ("N", "K", "y"),
    "bball_drive_event_0-hmm_drive_0": ("K", "N", "u", "v", "alpha"),
    "low_dim_gauss_mix-low_dim_gauss_mix": ("N", "y"),
    "gp_pois_regr-gp_pois_regr": ("N", "x", "k", "y"),
    "gp_pois_regr-gp_regr": ("N", "x", "k", "y"),
    "kidiq-kidscore_momhs": ("N", "kid_score", "mom_hs", "mom_iq"),
    "kidiq-kidscore_momiq": ("N", "kid_score", "mom_hs", "mom_iq"),
    "kidiq-kidscore_interaction": ("N", "kid_score", "mom_hs", "mom_iq"),
    "kidiq_with_mom_work-kidscore_mom_work": ("N", "kid_score", "mom_hs", "mom_iq",
                                              "mom_work"),
    "kidiq_with_mom_work-kidscore_interaction_z": ("N", "kid_score", "mom_hs", "mom_iq",
                                                   "mom_work"),
    "earnings-earn_height": ("N", "earn", "height", "male"),
    "earnings-logearn_height_male": ("N", "earn", "height", "male"),
    "earnings-logearn_interaction_z": ("N", "earn", "height", "male"),
    "earnings-logearn_logheight_male": ("N", "earn", "height", "male"),
    "mesquite-mesquite": ("N", "weight", "diam1", "diam2", "canopy_height", "total_height",
                          "density", "group"),
    "mesquite-logmesquite": ("N", "weight", "diam1", "diam2", "canopy_height", "total_height",
                             "density", "group"),
    "mesquite-logmesquite_logvas": ("N", "weight", "diam1", "diam2", "canopy_height",
                                    "total_height", "density", "group"),
    "nes1972-nes": ("N", "partyid7", "real_ideo", "race_adj", "educ1", "gender", "income",
                    "age_discrete"),
    "kilpisjarvi_mod-kilpisjarvi": ("N", "x", "y", "pmualpha", "psalpha", "pmubeta", "psbeta"),
    "sblrc-blr": ("N", "D", "X", "y"),
    "sblri-blr": ("N", "D", "X", "y"),
}


def main(git_dir: str) -> None:
    def show(path: str) -> bytes:
        return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"],
                              capture_output=True, check=True).stdout

    def unzip_json(path: str):
        archive = zipfile.ZipFile(io.BytesIO(show(path)))
        return json.loads(archive.read(archive.namelist()[0]))

    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"],
                            capture_output=True, check=True, text=True).stdout.strip()
    root = "posterior_database"
    merged_fields: dict[str, set] = {}
    for name, fields in SUITE.items():
        posterior = json.loads(show(f"{root}/posteriors/{name}.json"))
        merged_fields.setdefault(posterior["data_name"], set()).update(fields)
    for data_name, fields in merged_fields.items():
        data = unzip_json(f"{root}/data/data/{data_name}.json.zip")
        kept = {key: data[key] for key in sorted(fields)}
        (HERE / f"{data_name}.json").write_text(json.dumps(kept, separators=(",", ":")) + "\n")
    references = {json.loads(show(f"{root}/posteriors/{name}.json"))["reference_posterior_name"]
                  for name in SUITE}
    for reference in sorted(references):
        chains = unzip_json(f"{root}/reference_posteriors/draws/draws/{reference}.json.zip")
        names = list(chains[0])
        columns = {key: [v for chain in chains for v in chain[key]] for key in names}
        count = len(columns[names[0]])
        mean = {key: math.fsum(values) / count for key, values in columns.items()}
        sd = {key: math.sqrt(math.fsum((v - mean[key]) ** 2 for v in values) / (count - 1))
              for key, values in columns.items()}
        summary = {"names": names, "mean": [mean[k] for k in names], "sd": [sd[k] for k in names],
                   "draws": count, "chains": len(chains),
                   "source": f"stan-dev/posteriordb@{commit}: {root}/reference_posteriors/"
                             f"draws/draws/{reference}.json.zip"}
        (HERE / f"{reference}.json").write_text(json.dumps(summary, indent=1) + "\n")
        rows = [",".join(names)]
        per_chain = len(chains[0][names[0]])
        for chain in chains:
            for i in range(THIN - 1, per_chain, THIN):
                rows.append(",".join(f"{chain[key][i]:.6g}" for key in names))
        (HERE / f"{reference}.draws.csv").write_text("\n".join(rows) + "\n")
    (HERE / "SOURCE").write_text(f"https://github.com/stan-dev/posteriordb commit {commit}\n")


if __name__ == "__main__":
    main(sys.argv[1])
