"""The Realtime session: ephemeral keys, typed events, the aiortc adapter, tools."""
