"""`openlam validate DATASET`: find every problem, each with its file, field and expected form.

Unlike the reader, which stops at the first problem, this keeps going: structure first (info.json,
features, tables, files), then every episode fully decoded (frame counts per view, timestamps,
actions/state finite and of the declared shape). An episode's first problem is reported and the
check moves on to the next episode.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from openlam.data import lerobot_format as fmt
from openlam.data.source import open_dataset
from openlam.errors import DataError


def validate_dataset(path: str | Path, decode: bool = True) -> list[DataError]:
    path = Path(path)
    problems: list[DataError] = []
    try:
        src = open_dataset(path)
    except DataError as e:
        return [e]
    if len(src) == 0:
        return [DataError(path, "episodes", "at least one episode", "0 (empty dataset)")]
    from openlam.data.lerobot_reader import LeRobotSource

    if isinstance(src, LeRobotSource):
        problems += _structure(src)
    if decode:
        for i in range(len(src)):
            try:
                ep = src.load(i)
            except DataError as e:
                problems.append(e)
                continue
            info = src.episodes[i]
            if ep.length != info.length:
                problems.append(DataError(path, f"episode {i} length", f"{info.length} frames (metadata)", f"{ep.length} decoded"))
            if isinstance(src, LeRobotSource):
                for cam in ep.cameras:
                    want = src.features[src.camera_keys[cam]]["shape"]
                    hw = [d for d in want if d != 3][:2]
                    if list(ep.frames[cam].shape[1:3]) != hw and len(hw) == 2:
                        problems.append(DataError(path / "meta" / "info.json", f"features.{src.camera_keys[cam]}.shape",
                                                  f"{want} (decoded frames of episode {i})", f"{list(ep.frames[cam].shape[1:])}"))
    return merge_by_file(problems)


def _video_file_matches_episodes(path: Path, key: str, spans: list[tuple[int, float, float]], fps: float) -> list[DataError]:
    """A video file holds the frames its episodes index. Fewer frames than the last episode's end:
    episodes point past the file. More, when the episodes lie back to back from 0 s (as every writer
    lays them out): extra frames at the start or between episodes shift every later one against its
    actions and masks, which nothing downstream could tell. Files whose episodes leave gaps (an edited
    dataset that kept its videos) are checked for the first only."""
    from openlam.data.video import count_frames

    try:
        n = count_frames(path)
    except DataError as e:
        return [e]
    spans = sorted(spans, key=lambda s: s[1])
    tol = 0.5 / fps
    indexed = round(spans[-1][2] * fps)
    eps = [s[0] for s in spans]
    shown = ", ".join(map(str, eps[:8])) + (f", ... ({len(eps)} episodes)" if len(eps) > 8 else "")
    if n < indexed:
        return [DataError(path, "frame count", f"at least {indexed} frames, what its episodes index ({key}, episodes {shown})", f"{n}")]
    back_to_back = abs(spans[0][1]) <= tol and all(abs(b[1] - a[2]) <= tol for a, b in zip(spans, spans[1:]))
    if back_to_back and n > indexed:
        return [DataError(path, "frame count", f"{indexed} frames, what its episodes index back to back from 0 s ({key}, episodes "
                          f"{shown}); extra frames at the start or between episodes shift them against their actions (frames after "
                          "the last episode would be harmless, e.g. one deleted without re-encoding; only decoding could tell)", f"{n}")]
    return []


def merge_by_file(problems: list[DataError]) -> list[DataError]:
    """One error per (file, field): a missing or broken video shared by many episodes is named once,
    with the episodes it affects, not once per episode and check."""
    groups: dict[tuple[str, str], list[DataError]] = {}
    for p in problems:
        groups.setdefault((p.file, p.field), []).append(p)
    merged = []
    for (file, field), ps in groups.items():
        episodes = sorted({int(m) for p in ps for m in re.findall(r"\(episode (\d+)\)", p.expected)})
        if len(ps) == 1 or not episodes:
            merged += ps if not episodes else ps[:1]
            continue
        shown = ", ".join(map(str, episodes[:8])) + (f", ... ({len(episodes)} episodes)" if len(episodes) > 8 else "")
        expected = re.sub(r"\(episode \d+\)", f"(episodes {shown})", ps[0].expected)
        merged.append(DataError(file, field, expected, ps[0].got))
    return merged


def _structure(src) -> list[DataError]:  # type: ignore[no-untyped-def]
    problems: list[DataError] = []
    info_path = src.path / "meta" / "info.json"
    info = src.info
    lengths = np.array(src.ep_table["length"])
    if int(info.get("total_frames", lengths.sum())) != int(lengths.sum()):
        problems.append(DataError(info_path, "total_frames", f"{int(lengths.sum())} (sum of episode lengths)", str(info.get("total_frames"))))
    starts = np.array(src.ep_table["dataset_from_index"])
    ends = np.array(src.ep_table["dataset_to_index"])
    if not np.array_equal(ends - starts, lengths):
        bad = int(np.argmax(ends - starts != lengths))
        problems.append(DataError(src.path / "meta" / "episodes", "dataset_to_index - dataset_from_index",
                                  f"== length for every episode (episode {bad})", f"{ends[bad] - starts[bad]} vs {lengths[bad]}"))
    for key, f in src.features.items():
        if f["dtype"] == "video":
            files: dict[Path, list[tuple[int, float, float]]] = {}
            for i in range(len(src)):
                try:
                    p = src.video_file(key, i)
                except DataError as e:  # a path leaving the dataset folder
                    problems.append(e)
                    break
                except KeyError:
                    problems.append(DataError(src.path / "meta" / "episodes", f"videos/{key}/chunk_index", "present", "missing"))
                    break
                if not p.is_file():
                    problems.append(DataError(p, "video file", f"present for {key} (episode {i})", "missing"))
                    continue
                t = src.ep_table
                start = float(t[f"videos/{key}/from_timestamp"][i]) if f"videos/{key}/from_timestamp" in t else 0.0
                end = float(t[f"videos/{key}/to_timestamp"][i]) if f"videos/{key}/to_timestamp" in t else start + lengths[i] / src.fps
                files.setdefault(p, []).append((i, start, end))
            for p, spans in files.items():
                problems += _video_file_matches_episodes(p, key, spans, src.fps)
        elif f["dtype"] not in ("image", "string") and not isinstance(f.get("shape"), list):
            problems.append(DataError(info_path, f"features.{key}.shape", "a list of ints", repr(f.get("shape"))))
    for cam in src.cameras:
        if cam in src.mask_keys and src.features[src.mask_keys[cam]]["shape"][:2] != src.features[src.camera_keys[cam]]["shape"][:2]:
            problems.append(DataError(info_path, f"features.{fmt.mask_key(cam)}.shape", "the same height/width as the camera"))
    return problems
