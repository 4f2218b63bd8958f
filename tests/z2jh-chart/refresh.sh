#!/usr/bin/env bash
# Re-extract the Zero to JupyterHub chart files the tests run (tests/realhub/z2jh_support.py) at a tag,
# from a local clone of https://github.com/jupyterhub/zero-to-jupyterhub-k8s (with or without a work
# tree; only `git show` and `git rev-parse` are used, nothing is fetched):
#
#   tests/z2jh-chart/refresh.sh 4.4.0 ~/src/zero-to-jupyterhub-k8s
#   Z2JH_SOURCE=~/src/zero-to-jupyterhub-k8s tests/z2jh-chart/refresh.sh 4.4.0
#
# Writes tests/z2jh-chart/<tag>/ (replacing it): the files below under their paths in the chart's
# repository, its LICENSE, SHA256SUMS (the tests check the vendored files against it) and README.md.
# A new tag also needs CHART_VERSION in tests/realhub/z2jh_support.py and the FROM line of
# deploy/z2jh/Dockerfile.
set -euo pipefail

FILES=(
  LICENSE
  images/hub/requirements.txt
  jupyterhub/Chart.yaml
  jupyterhub/files/hub/jupyterhub_config.py
  jupyterhub/files/hub/z2jh.py
  jupyterhub/templates/_helpers-names.tpl
  jupyterhub/values.schema.yaml
  jupyterhub/values.yaml
)

tag=${1:-}
source=${2:-${Z2JH_SOURCE:-}}
if [ -z "$tag" ] || [ -z "$source" ]; then
  echo "usage: $0 TAG SOURCE   (SOURCE: a clone of zero-to-jupyterhub-k8s; or set Z2JH_SOURCE)" >&2
  exit 2
fi
commit=$(git -C "$source" rev-parse --verify --quiet "refs/tags/$tag^{commit}") || {
  echo "$source has no tag $tag (fetch the tags first: git -C $source fetch --tags)" >&2
  exit 1
}
date=$(git -C "$source" log -1 --format=%cs "$commit")

here=$(cd "$(dirname "$0")" && pwd)
out="$here/$tag"
work="$here/.$tag.tmp"
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
for path in "${FILES[@]}"; do
  mkdir -p "$work/$(dirname "$path")"
  git -C "$source" show "$commit:$path" >"$work/$path"
done
(cd "$work" && sha256sum "${FILES[@]}" >SHA256SUMS)

{
  echo "# Zero to JupyterHub chart $tag (vendored for the tests)"
  echo
  echo "Files of https://github.com/jupyterhub/zero-to-jupyterhub-k8s at tag \`$tag\`"
  echo "(commit \`$commit\`, $date), unmodified, under their paths in that repository;"
  echo "Copyright (c) Project Jupyter Contributors, BSD 3-Clause License ([LICENSE](LICENSE))."
  echo "\`SHA256SUMS\` lists their checksums (\`tests/realhub/test_z2jh_values.py\` checks them)."
  echo
  echo "\`tests/realhub/z2jh_support.py\` writes what Helm would render from them (the hub's ConfigMap"
  echo "of resource names, its Secret with the merged values) and runs \`files/hub/jupyterhub_config.py\`"
  echo "in a real JupyterHub; \`values.yaml\` holds the defaults our values are merged over and"
  echo "\`values.schema.yaml\` the schema they are validated against; \`images/hub/requirements.txt\` is"
  echo "what the chart's hub image (\`quay.io/jupyterhub/k8s-hub:$tag\`) has installed, frozen. Do not"
  echo "edit: re-extract with"
  echo
  echo '```bash'
  echo "tests/z2jh-chart/refresh.sh $tag /path/to/zero-to-jupyterhub-k8s"
  echo '```'
  echo
  echo "Files:"
  echo
  for path in "${FILES[@]}"; do echo "- \`$path\`"; done
} >"$work/README.md"

rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "wrote $out (commit $commit)"
