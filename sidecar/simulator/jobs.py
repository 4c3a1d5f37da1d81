"""The ``/api/jobs`` views (ComfyUI ≥ v0.7.0; trace 08) built from the queue and history."""

from __future__ import annotations

from typing import Any

from .state import HistoryEntry, PromptStore, QueueItem

__all__ = ["job_detail", "list_jobs"]


def _outputs_count(outputs: dict[str, Any]) -> int:
    return sum(len(v) for ui in outputs.values() for v in ui.values() if isinstance(v, list))


def _preview_output(outputs: dict[str, Any]) -> dict[str, Any] | None:
    candidates = [
        {**record, "nodeId": node, "mediaType": media}
        for node, ui in outputs.items()
        for media, records in ui.items()
        if media in ("images", "video", "audio") and isinstance(records, list)
        for record in records
        if isinstance(record, dict)
    ]
    for record in candidates:
        if record.get("type") == "output":
            return record
    return candidates[0] if candidates else None


def _finished_status(entry: HistoryEntry) -> str:
    if entry.status_str == "success":
        return "completed"
    kinds = {m[0] for m in entry.messages}
    return "cancelled" if "execution_interrupted" in kinds else "failed"


def _summary(item: QueueItem, status: str, entry: HistoryEntry | None) -> dict[str, Any]:
    outputs = entry.outputs if entry is not None else {}
    return {
        "id": item.prompt_id,
        "status": status,
        "priority": int(item.number) if float(item.number).is_integer() else item.number,
        "create_time": item.create_time_ms,
        "execution_start_time": entry.start_ms if entry is not None else None,
        "execution_end_time": entry.end_ms if entry is not None else None,
        "outputs_count": _outputs_count(outputs),
        "preview_output": _preview_output(outputs),
    }


def _all_jobs(store: PromptStore) -> list[tuple[QueueItem, str, HistoryEntry | None]]:
    jobs: list[tuple[QueueItem, str, HistoryEntry | None]] = []
    jobs += [(e.item, _finished_status(e), e) for e in store.history.values()]
    if store.running is not None:
        jobs.append((store.running, "in_progress", None))
    jobs += [(i, "pending", None) for i in store.pending]
    jobs.sort(key=lambda j: (j[0].create_time_ms, j[0].seq), reverse=True)
    return jobs


def list_jobs(store: PromptStore, *, limit: int | None, offset: int = 0) -> dict[str, Any]:
    """``GET /api/jobs``: newest first, with pagination."""
    jobs = _all_jobs(store)
    window = jobs[offset:] if limit is None else jobs[offset : offset + limit]
    return {
        "jobs": [_summary(item, status, entry) for item, status, entry in window],
        "pagination": {
            "offset": offset,
            "limit": limit,
            "total": len(jobs),
            "has_more": offset + len(window) < len(jobs),
        },
    }


def job_detail(store: PromptStore, job_id: str) -> dict[str, Any] | None:
    """``GET /api/jobs/<id>``; None when unknown (deleted pending jobs are unknown)."""
    for item, status, entry in _all_jobs(store):
        if item.prompt_id != job_id:
            continue
        detail = _summary(item, status, entry)
        detail["outputs"] = entry.outputs if entry is not None else {}
        detail["execution_status"] = (
            {"status_str": entry.status_str, "completed": entry.completed, "messages": entry.messages}
            if entry is not None
            else None
        )
        detail["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
        return detail
    return None
