#!/usr/bin/env bash
# The peers' wheels for the GPU machine's Python bench (QuACK, Liger and FlashInfer beside
# torch.compile), which has no package registry. QuACK's CuTe DSL libraries are one 92 MB
# wheel and FlashInfer one of 101 MB, more than one call to the machine carries (64 MiB with
# the tree), so the wheels travel in parts (four at the default size) over successive calls
# on a warm machine: each part but the last is stashed under /root, the last joins them
# there.
#
#   tools/peer-wheels.sh pack DIR            here: download the pinned wheels (Python 3.12,
#                                            x86_64) and split them into DIR/a, DIR/b, ...,
#                                            each under 52 MB (DIR is best an ignored path:
#                                            /.whl/)
#   tools/peer-wheels.sh stash PART          there, a call for each part but the last (carry
#                                            PART): keep its files in /root/peer-wheels
#   tools/peer-wheels.sh install PART SITE   there, with the last part (carry it): join the parts,
#                                            install them into SITE (pip --target, no
#                                            dependencies) and print the PYTHONPATH to export:
#                                            eval "$(tools/peer-wheels.sh install .whl/d SITE)"
#                                            (its ${PYTHONPATH...} must be expanded by the shell)
#
# Installed with --target, the CuTe DSL is found only with SITE/nvidia_cutlass_dsl/
# dsl_packages on the path too (its .pth file is not read from a target folder).
set -eu
stash=${PEER_WHEELS_STASH:-/root/peer-wheels}
# QuACK 0.6.5 and what it imports, as the GPU machine's torch 2.11 (cu130) needs them; Liger;
# FlashInfer 0.7.4, whose flashinfer.norm imports with tvm-ffi, torch-c-dlpack-ext (QuACK's
# too) and nvidia-ml-py alone (tried with a CPU torch: its other requirements are for other
# modules) and compiles its kernels with the machine's nvcc and ninja on first use.
wheels=(quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2
  torch-c-dlpack-ext==0.1.5 einops==0.8.2 liger-kernel==0.8.5 flashinfer-python==0.7.4
  nvidia-ml-py==13.615.71)

case "${1:-}" in
  pack)
    dir=${2:?usage: tools/peer-wheels.sh pack DIR}
    mb=${PEER_WHEELS_PART_MB:-52}
    mkdir -p "$dir/download"
    python3 -m pip download -q -d "$dir/download" --platform manylinux_2_28_x86_64 --python-version 3.12 \
      --implementation cp --only-binary=:all: --no-deps "${wheels[@]}"
    rm -rf "$dir"/[a-z] "$dir/split"
    mkdir -p "$dir/split"
    # The large wheel split into pieces of $mb MiB, piece .part.aa in DIR/a, .part.ab in DIR/b
    # and so on; every other wheel goes with the last piece.
    small=()
    for w in "$dir"/download/*.whl; do
      if [ "$(stat -c %s "$w")" -gt $((mb * 1024 * 1024)) ]; then
        split -b "${mb}M" "$w" "$dir/split/$(basename "$w").part."
      else
        small+=("$w")
      fi
    done
    shopt -s nullglob  # no wheel over the size: no pieces, one part of the small wheels
    parts=("$dir"/split/*)
    letters=(a b c d e f g h i j)
    for i in "${!parts[@]}"; do
      mkdir -p "$dir/${letters[$i]}"
      mv "${parts[$i]}" "$dir/${letters[$i]}/"
    done
    last=$dir/${letters[$(( ${#parts[@]} > 0 ? ${#parts[@]} - 1 : 0 ))]}
    mkdir -p "$last"
    cp "${small[@]}" "$last/"
    rmdir "$dir/split"
    du -sh "$dir"/[a-z]
    ;;
  stash)
    part=${2:?usage: tools/peer-wheels.sh stash PART}
    mkdir -p "$stash"
    cp "$part"/* "$stash/"
    ls -la "$stash" >&2
    ;;
  install)
    part=${2:?usage: tools/peer-wheels.sh install PART SITE}
    site=${3:?usage: tools/peer-wheels.sh install PART SITE}
    mkdir -p "$stash"
    cp "$part"/* "$stash/"
    for head in "$stash"/*.whl.part.aa; do
      [ -e "$head" ] || continue
      whl=${head%.part.aa}
      cat "$whl".part.* >"$whl"
    done
    python3 -m pip install -q --no-deps --target "$site" "$stash"/*.whl >&2
    echo "export PYTHONPATH=$site:$site/nvidia_cutlass_dsl/dsl_packages\${PYTHONPATH:+:\$PYTHONPATH}"
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
