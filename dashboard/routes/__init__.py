"""One router per area: auth (login, register, account), admin (users), pages (HTML), api (JSON)."""
