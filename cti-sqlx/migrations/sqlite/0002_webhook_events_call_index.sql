-- Every inbox event of a call, whatever its status: "why didn't this call reach the CRM?"
-- (operators and the event console look events up by call id). Claims use the partial
-- index webhook_events_call_unfinished.
CREATE INDEX webhook_events_app_call ON webhook_events (app_id, call_id);
