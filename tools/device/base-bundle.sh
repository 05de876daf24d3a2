#!/usr/bin/env bash
# Builds the device bundle of an earlier commit and puts it beside this checkout's as .device/NAME-* (addon, duo-bench
# bundle, commit), for run.sh's A/B steps (duo-ab: DUO_BASE=1 or DUO_BUNDLE=NAME; profile-ab: DUO_PROFILE_BUNDLES).
# Run here after `pnpm device:prepare`. Usage: bash tools/device/base-bundle.sh REV [NAME (default base)]
set -euo pipefail
rev=${1:?usage: base-bundle.sh REV [NAME]}
name=${2:-base}
root=$(git rev-parse --show-toplevel)
[ -d "$root/.device" ] || { echo "run pnpm device:prepare first (no .device/ here)" >&2; exit 2; }
work="$(mktemp -d)/$name"
git -C "$root" worktree add -q --detach "$work" "$rev"
trap 'git -C "$root" worktree remove --force "$work"' EXIT
echo "[device] building the $name bundle of $(git -C "$work" rev-parse --short=12 HEAD) (CUDA for ${DUO_CUDA_ARCHS:-90a})"
(cd "$work" && pnpm install --frozen-lockfile --prefer-offline > /dev/null && DUO_CUDA_ARCHS=${DUO_CUDA_ARCHS:-90a} pnpm device:prepare)
for file in duoattn.node duo-bench.mjs; do cp "$work/.device/$file.xz" "$root/.device/$name-$file.xz"; done
cp "$work/.device/commit.txt" "$root/.device/$name-commit.txt"
echo "[device] .device/$name-* ready: $(du -ch "$root"/.device/"$name"-* | tail -1)"
