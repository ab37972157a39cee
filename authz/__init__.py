"""The authorization core: Okta API Access Management semantics (DESIGN §3). Knows nothing of proxying."""
