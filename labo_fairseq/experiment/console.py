"""How the pipeline speaks: its console lines and durations."""


def say(message: str) -> None:
    print(f"[experiment] {message}", flush=True)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
