#!/usr/bin/env bash
# The model tests on the lowest timm that setup.cfg admits (the README's test command runs
# everything on the newest). timm is installed into a temporary folder put first on
# PYTHONPATH, so the environment's own timm is left alone.
#   bash scripts/test_timm_floor.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
floor=$("$PY" - <<'PYEOF'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
line = next(l for l in cfg["options"]["install_requires"].splitlines() if l.strip().startswith("timm"))
print(re.search(r">=\s*([0-9.]+)", line).group(1))
PYEOF
)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install -q --no-deps --target "$tmp" "timm==$floor"
echo "timm $floor (the floor of setup.cfg):"
PYTHONPATH="$tmp${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_cast.py tests/test_hcast_models.py tests/test_hier_vit.py tests/test_timm_contract.py \
    tests/test_loading_contract.py tests/test_weights.py tests/test_hub.py "$@"
