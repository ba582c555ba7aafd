-- 012_system_keys: over tcp:// every peer is known by its CurveZMQ public key.
-- A system is bound to the key that first registered it, so a worker can
-- register, heartbeat and report only as its own system.

ALTER TABLE systems ADD COLUMN public_key TEXT
    CHECK (public_key IS NULL OR length(public_key) = 40);
