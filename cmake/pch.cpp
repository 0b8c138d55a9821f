// Anchor for the shared precompiled header (see QLORA_PCH).
