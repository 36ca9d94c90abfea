#!/usr/bin/env bash
# Bring a file larger than a device call returns (16 MiB a file, 64 MiB a call) back from the GPU machine in parts:
#
#   on the device, one call per group:  bash benchmarks/ship.sh send FILE GROUP      (GROUP = 0, 1, ... until it says
#                                       "last group"); it writes 4 parts of 15 MiB and FILE's sha256 under $OUT
#   here, with every group's files:     bash benchmarks/ship.sh join NAME OUT-FILE DIR...  (NAME: FILE's base name;
#                                       DIR: the folders the calls came back to)
#
# join concatenates NAME.part-NNN in order and checks the sha256, so a missing or damaged part is an error, not a
# broken model.
set -euo pipefail
PART=$((15 * 1024 * 1024)) PER_CALL=4
case "${1:-}" in
send)
    file=${2:?FILE} group=${3:?GROUP}
    : "${OUT:?OUT: the output folder of the device call}"
    name=$(basename "$file") size=$(stat -c %s "$file")
    parts=$(( (size + PART - 1) / PART )) first=$(( group * PER_CALL ))
    if [ "$first" -ge "$parts" ]; then echo "ship: $file has $parts parts, $(( (parts + PER_CALL - 1) / PER_CALL )) groups; no group $group" >&2; exit 2; fi
    mkdir -p "$OUT/ship"
    sha256sum "$file" | cut -d' ' -f1 > "$OUT/ship/$name.sha256"
    for (( i = first; i < first + PER_CALL && i < parts; i++ )); do
        dd if="$file" of="$OUT/ship/$(printf '%s.part-%03d' "$name" "$i")" bs="$PART" skip="$i" count=1 status=none
    done
    last=$(( (parts + PER_CALL - 1) / PER_CALL - 1 ))
    tail=""; if [ "$group" -eq "$last" ]; then tail=": last group"; fi
    echo "ship: $name group $group of 0..$last ($parts parts of 15 MiB, $size bytes)$tail"
    ;;
join)
    name=${2:?NAME} out=${3:?OUT-FILE}; shift 3
    [ "$#" -gt 0 ] || { echo "ship join: name the folders the send calls came back to" >&2; exit 2; }
    # one copy of each part (a group fetched twice, or nested folders, finds some twice)
    mapfile -t parts < <(find "$@" -name "$name.part-*" -printf '%f\t%p\n' | sort -t $'\t' -k1,1 -u | cut -f2)
    sums=$(find "$@" -name "$name.sha256" | head -n 1)
    [ "${#parts[@]}" -gt 0 ] && [ -n "$sums" ] || { echo "ship join: no $name.part-* or $name.sha256 under $*" >&2; exit 2; }
    for (( i = 0; i < ${#parts[@]}; i++ )); do
        [ "$(basename "${parts[$i]}")" = "$(printf '%s.part-%03d' "$name" "$i")" ] \
            || { echo "ship join: part $i of $name is missing (found ${parts[$i]})" >&2; exit 1; }
    done
    cat "${parts[@]}" > "$out.tmp"
    if [ "$(sha256sum "$out.tmp" | cut -d' ' -f1)" != "$(cat "$sums")" ]; then
        rm -f "$out.tmp"; echo "ship join: $name: sha256 differs from $sums (a part is missing at the end, or damaged)" >&2; exit 1
    fi
    mv "$out.tmp" "$out"; echo "ship: $out (${#parts[@]} parts, sha256 checked)"
    ;;
*) echo "usage: ship.sh send FILE GROUP | ship.sh join NAME OUT-FILE DIR..." >&2; exit 2 ;;
esac
