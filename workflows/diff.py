"""A structural diff of two versions: what changed, where (JSON path), from what to what."""


def _path(base, key):
    return f"{base}[{key}]" if isinstance(key, int) else f"{base}.{key}"


def _steps_by_name(value):
    """Steps are compared by name, so inserting a step shows as one addition, not a cascade."""
    if isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value):
        return {item["name"]: item for item in value}
    return None


def json_changes(old, new, path="$") -> list[dict]:
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new)):
            if key not in new:
                changes.append({"op": "removed", "path": _path(path, key), "from": old[key]})
            elif key not in old:
                changes.append({"op": "added", "path": _path(path, key), "to": new[key]})
            else:
                changes.extend(json_changes(old[key], new[key], _path(path, key)))
        return changes
    old_named, new_named = _steps_by_name(old), _steps_by_name(new)
    if old_named is not None and new_named is not None:
        return json_changes(old_named, new_named, path)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        changes = []
        for index, (a, b) in enumerate(zip(old, new)):
            changes.extend(json_changes(a, b, _path(path, index)))
        return changes
    if old != new or type(old) is not type(new):
        return [{"op": "changed", "path": path, "from": old, "to": new}]
    return []


def version_diff(old, new) -> dict:
    """Changes from ``old`` to ``new``; ``old`` None means from nothing (a first version)."""
    old_spec, old_artifacts = (old.spec, set(old.artifact_digests)) if old else ({}, set())
    return {
        "from": {"number": old.number, "digest": old.digest} if old else None,
        "to": {"number": new.number, "digest": new.digest},
        "spec": json_changes(old_spec, new.spec),
        "artifacts": {
            "added": sorted(set(new.artifact_digests) - old_artifacts),
            "removed": sorted(old_artifacts - set(new.artifact_digests)),
        },
    }
