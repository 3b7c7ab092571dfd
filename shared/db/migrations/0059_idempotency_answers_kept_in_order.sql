-- intent_ref: platform.idempotency
-- A replayed answer is the first answer, byte for byte: its body is kept as `json`, which keeps the text it was
-- given, key order included. As `jsonb` its object keys came back sorted by length then bytes, so a retry got the
-- same values in another order (an intent's definition among them), and a client comparing answers or hashing a
-- body saw two different answers to one request. Rows kept before this migration replay as they were stored.

ALTER TABLE app.idempotency_keys ALTER COLUMN response_body TYPE json USING response_body::json;
ALTER TABLE control.idempotency_keys ALTER COLUMN response_body TYPE json USING response_body::json;
