"""Audio: fixed frames, sources and sinks, echo suppression, VAD, earcons."""
