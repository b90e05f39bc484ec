-- Fold the events in `_new` (a batch, or a chunk of a partition on rebuild) into
-- the tables. `_fields` parses an event's JSON into a struct of the fields that
-- statement reads as `f.<name>` (projector.py, `_with_fields`); each statement
-- parses only the events it reads fields of.
-- Every merge is associative, so any split of the log into batches
-- gives the same rows: sums and counts add up, "first" values keep the old
-- row's, "last" values take the batch's (a batch is always later in each
-- session's stream than what is already folded), maxima take the greater.
-- Costs are DECIMAL so that sums do not depend on the order of additions.
--
-- Only the `_open` tables are read and written here: before this runs, the rows
-- of any session of the batch that are in the `_ended` tables are moved back
-- (projector.py, `_fold_new`). So a round's joins and deletes touch the rows of
-- the sessions the fleet is working on, however long the history.

-- model calls, one row per request ------------------------------------------------
CREATE OR REPLACE TEMP TABLE _mc_rows AS
WITH b AS (
    SELECT session_id AS execution_id,
           f.request_id AS request_id,
           min(f.step) AS step_number,
           arg_max(f.model, seq) FILTER (type IN ('ModelCallRequested', 'ModelResponded')) AS model,
           -- every field of the last answer at once (none of them is ever NULL)
           arg_max({'input_tokens': f.input_tokens, 'output_tokens': f.output_tokens,
                    'cache_read_tokens': f.cache_read_tokens,
                    'cache_write_tokens': f.cache_write_tokens,
                    'cost_usd': f.cost_usd::DECIMAL(20, 10), 'latency_ms': f.latency_ms,
                    'stop_reason': f.stop_reason, 'responded_at': ts}, seq)
               FILTER (type = 'ModelResponded') AS r,
           min(ts) FILTER (type = 'ModelCallRequested') AS called_at,
           arg_max(CASE type WHEN 'ModelCallRequested' THEN 'requested'
                             WHEN 'ModelResponded' THEN 'responded'
                             ELSE 'failed' END, seq)
               FILTER (type <> 'ModelCallRetried') AS status,
           count(*) FILTER (type = 'ModelCallRetried') AS retries,
           arg_max(f.error, seq) FILTER (type = 'ModelCallFailed') AS error,
           arg_max(f.status_code, seq) FILTER (type = 'ModelCallFailed') AS status_code,
           arg_max(coalesce(f.purpose, ''), seq) FILTER (type = 'ModelCallRequested') AS purpose,
           -- what the session's row takes from its model calls (below), so that the
           -- sessions' statement parses none of these events again
           max(f.step) FILTER (type = 'ModelCallRequested') AS step_max,
           sum(f.input_tokens) FILTER (type = 'ModelResponded') AS input_sum,
           sum(f.output_tokens) FILTER (type = 'ModelResponded') AS output_sum,
           sum(f.cost_usd::DECIMAL(20, 10)) FILTER (type = 'ModelResponded') AS cost_sum,
           max(seq) FILTER (type <> 'ModelCallRetried') AS last_seq,
           arg_max(type = 'ModelCallRequested', seq) FILTER (type <> 'ModelCallRetried') AS last_requested
    FROM (SELECT session_id, seq, ts, type, _fields(data) AS f FROM _new
          WHERE type IN ('ModelCallRequested', 'ModelCallRetried', 'ModelResponded',
                         'ModelCallFailed'))
    GROUP BY session_id, f.request_id
)
SELECT b.execution_id,
       CASE WHEN t.step_number IS NULL THEN b.step_number
            ELSE least(t.step_number, b.step_number) END AS step_number,
       coalesce(b.model, t.model) AS model,
       coalesce(b.r.input_tokens, t.input_tokens) AS input_tokens,
       coalesce(b.r.output_tokens, t.output_tokens) AS output_tokens,
       coalesce(b.r.cache_read_tokens, t.cache_read_tokens) AS cache_read_tokens,
       coalesce(b.r.cost_usd, t.cost_usd) AS cost_usd,
       coalesce(b.r.latency_ms, t.latency_ms) AS latency_ms,
       coalesce(b.r.stop_reason, t.stop_reason) AS stop_reason,
       coalesce(t.called_at, b.called_at) AS called_at,
       b.request_id,
       coalesce(b.status, t.status, 'requested') AS status,
       coalesce(b.r.cache_write_tokens, t.cache_write_tokens) AS cache_write_tokens,
       coalesce(t.retries, 0) + b.retries AS retries,
       coalesce(b.error, t.error) AS error,
       coalesce(b.status_code, t.status_code) AS status_code,
       coalesce(b.r.responded_at, t.responded_at) AS responded_at,
       coalesce(b.purpose, t.purpose, '') AS purpose,
       -- the batch's alone, for the sessions' statement (not columns of the table)
       b.step_max AS _step_max, b.input_sum AS _input_sum, b.output_sum AS _output_sum,
       b.cost_sum AS _cost_sum, b.last_seq AS _last_seq, b.last_requested AS _last_requested
FROM b
LEFT JOIN _model_calls_open t ON t.execution_id = b.execution_id AND t.request_id = b.request_id;

DELETE FROM _model_calls_open t USING _mc_rows b
WHERE t.execution_id = b.execution_id AND t.request_id = b.request_id;

INSERT INTO _model_calls_open BY NAME
SELECT * EXCLUDE (_step_max, _input_sum, _output_sum, _cost_sum, _last_seq, _last_requested)
FROM _mc_rows;

-- tool calls, one row per call ----------------------------------------------------
CREATE OR REPLACE TEMP TABLE _tc_rows AS
WITH b AS (
    SELECT session_id AS execution_id,
           f.call_id AS id,
           -- the proposal, the vetting and the decision: each event's fields at once
           -- (none of them is ever NULL)
           arg_min({'step': f.step, 'tool': f.tool, 'input': f.input}, seq)
               FILTER (type = 'ToolCallProposed') AS p,
           min(ts) FILTER (type = 'ToolCallProposed') AS called_at,
           -- approved with an edited input: the input it runs with
           arg_max(f.edited_input, seq)
               FILTER (type = 'ReviewDecided' AND f.approved AND f.edited_input <> '')
               AS edited_input,
           arg_max(f.output, seq) FILTER (type = 'ToolCallCompleted') AS tool_output,
           arg_max(CASE type
                       WHEN 'ToolCallProposed' THEN 'pending'
                       WHEN 'ToolCallRejected' THEN 'denied'
                       WHEN 'ReviewRequested' THEN 'awaiting_review'
                       WHEN 'ReviewDecided' THEN
                           CASE WHEN f.approved THEN 'pending' ELSE 'denied' END
                       WHEN 'ToolCallStarted' THEN 'running'
                       WHEN 'ToolCallCompleted' THEN
                           CASE WHEN f.is_error THEN 'failed' ELSE 'succeeded' END
                       ELSE 'failed' END, seq)
               FILTER (type <> 'ToolCallVetted') AS status,
           arg_max({'risk': f.risk, 'verdict': f.verdict, 'rule': f.rule}, seq)
               FILTER (type = 'ToolCallVetted') AS v,
           arg_max(f.reason, seq) FILTER (type IN ('ToolCallVetted', 'ReviewRequested')) AS reason,
           arg_max(f.latency_ms, seq)
               FILTER (type IN ('ToolCallCompleted', 'ToolCallFailed')) AS latency_ms,
           arg_max(CASE type
                       WHEN 'ToolCallRejected' THEN f.reason
                       WHEN 'ToolCallFailed' THEN f.error
                       ELSE coalesce(nullif(f.note, ''), 'denied') END, seq)
               FILTER (type IN ('ToolCallRejected', 'ToolCallFailed')
                       OR (type = 'ReviewDecided' AND NOT f.approved)) AS error,
           arg_max(type = 'ReviewRequested' AND f.in_doubt, seq)
               FILTER (type = 'ReviewRequested'
                       OR (type = 'ReviewDecided' AND f.approved)) AS in_doubt,
           count(*) FILTER (type = 'ReviewRequested') AS reviews,
           arg_max(ts, seq) FILTER (type = 'ReviewRequested') AS review_requested_at,
           arg_max({'at': ts, 'reviewer': f.reviewer, 'note': f.note}, seq)
               FILTER (type = 'ReviewDecided') AS d,
           count(*) FILTER (type = 'ToolCallStarted') AS attempts,
           arg_max(f.idempotency_key, seq) FILTER (type = 'ToolCallStarted') AS idempotency_key,
           arg_max(ts, seq)
               FILTER (type IN ('ToolCallCompleted', 'ToolCallFailed', 'ToolCallRejected')) AS finished_at
    FROM (SELECT session_id, seq, ts, type, _fields(data) AS f FROM _new
          WHERE type IN ('ToolCallProposed', 'ToolCallVetted', 'ToolCallRejected',
                         'ReviewRequested', 'ReviewDecided', 'ToolCallStarted',
                         'ToolCallCompleted', 'ToolCallFailed'))
    GROUP BY session_id, f.call_id
)
SELECT b.id,
       b.execution_id,
       coalesce(t.step_number, b.p.step) AS step_number,
       coalesce(t.tool_name, b.p.tool) AS tool_name,
       coalesce(b.edited_input, t.tool_input, b.p.input) AS tool_input,
       coalesce(b.tool_output, t.tool_output) AS tool_output,
       coalesce(b.status, t.status, 'pending') AS status,
       coalesce(b.v.risk, t.risk) AS risk,
       coalesce(b.v.verdict, t.verdict) AS verdict,
       coalesce(b.latency_ms, t.latency_ms) AS latency_ms,
       -- a call closed by its session's end (below) that has events again: the note
       -- that closed it goes, and is written again below if it is still open
       coalesce(b.error,
                CASE WHEN b.status IS NOT NULL AND regexp_full_match(t.error,
                          'session (completed|failed|cancelled) '
                          || '(before the call ran|while the call was running)')
                     THEN NULL ELSE t.error END) AS error,
       coalesce(t.called_at, b.called_at) AS called_at,
       coalesce(b.reason, t.reason) AS reason,
       coalesce(b.v.rule, t.rule) AS rule,
       coalesce(b.in_doubt, t.in_doubt, false) AS in_doubt,
       coalesce(t.reviews, 0) + b.reviews AS reviews,
       coalesce(b.review_requested_at, t.review_requested_at) AS review_requested_at,
       coalesce(b.d.at, t.reviewed_at) AS reviewed_at,
       coalesce(b.d.reviewer, t.reviewer) AS reviewer,
       coalesce(b.d.note, t.review_note) AS review_note,
       coalesce(t.attempts, 0) + b.attempts AS attempts,
       coalesce(b.idempotency_key, t.idempotency_key) AS idempotency_key,
       coalesce(b.finished_at, t.finished_at) AS finished_at
FROM b
LEFT JOIN _agent_tool_calls_open t ON t.execution_id = b.execution_id AND t.id = b.id;

DELETE FROM _agent_tool_calls_open t USING _tc_rows b
WHERE t.execution_id = b.execution_id AND t.id = b.id;

INSERT INTO _agent_tool_calls_open BY NAME SELECT * FROM _tc_rows;

-- steps: latency a step spent working (its model calls + its tool calls), -------------
-- recomputed for every step the batch touched; exact sums (DECIMAL).
CREATE OR REPLACE TEMP TABLE _st_rows AS
WITH k AS (
    SELECT DISTINCT execution_id, step_number
    FROM (SELECT execution_id, step_number FROM _mc_rows
          UNION ALL
          SELECT execution_id, step_number FROM _tc_rows)
    WHERE step_number IS NOT NULL
), m AS (
    SELECT m.execution_id, m.step_number, sum(m.latency_ms::DECIMAL(18, 6)) AS ms
    FROM _model_calls_open m SEMI JOIN k
        ON m.execution_id = k.execution_id AND m.step_number = k.step_number
    WHERE m.status = 'responded' AND m.latency_ms IS NOT NULL
    GROUP BY m.execution_id, m.step_number
), t AS (
    SELECT t.execution_id, t.step_number, sum(t.latency_ms::DECIMAL(18, 6)) AS ms
    FROM _agent_tool_calls_open t SEMI JOIN k
        ON t.execution_id = k.execution_id AND t.step_number = k.step_number
    WHERE t.latency_ms IS NOT NULL
    GROUP BY t.execution_id, t.step_number
)
SELECT k.execution_id, k.step_number, m.ms AS model_ms, t.ms AS tool_ms
FROM k
LEFT JOIN m ON m.execution_id = k.execution_id AND m.step_number = k.step_number
LEFT JOIN t ON t.execution_id = k.execution_id AND t.step_number = k.step_number;

DELETE FROM _agent_steps_open s USING _st_rows k
WHERE s.execution_id = k.execution_id AND s.step_number = k.step_number;

INSERT INTO _agent_steps_open BY NAME
SELECT *, coalesce(model_ms, 0) + coalesce(tool_ms, 0) AS latency_ms
FROM _st_rows
WHERE model_ms IS NOT NULL OR tool_ms IS NOT NULL;

-- sessions, one row each ----------------------------------------------------------
CREATE OR REPLACE TEMP TABLE _ex_merged AS
WITH b AS (
    SELECT session_id AS id,
           min("partition") AS "partition",
           -- the task as created, every field at once (none of them is ever NULL)
           arg_min({'task_id': f.task_id, 'tenant': f.tenant, 'agent_type': f.agent_type,
                    'model': f.model, 'input_data': f.prompt, 'limits': f.limits,
                    'tools': f.tools, 'workspace': f.workspace}, seq)
               FILTER (type = 'SessionCreated') AS c,
           min(ts) FILTER (type = 'SessionCreated') AS created_at,
           count(*) FILTER (type = 'SessionClaimed') AS claims,
           arg_max(f.owner, seq) FILTER (type = 'SessionClaimed') AS owner,
           max(epoch) AS epoch,
           max(seq) AS seq,
           arg_max(ts, seq) AS updated_at,
           bool_or(type = 'CancelRequested') AS cancel_requested,
           arg_max(CASE type WHEN 'SessionCompleted' THEN 'completed'
                             WHEN 'SessionFailed' THEN 'failed'
                             ELSE 'cancelled' END, seq)
               FILTER (type IN ('SessionCompleted', 'SessionFailed', 'SessionCancelled')) AS ended_status,
           arg_max(ts, seq)
               FILTER (type IN ('SessionCompleted', 'SessionFailed', 'SessionCancelled')) AS completed_at,
           arg_max(f.result, seq) FILTER (type = 'SessionCompleted') AS result,
           arg_max(f.error, seq) FILTER (type = 'SessionFailed') AS error,
           count(*) FILTER (type = 'ModelCallRetried') AS model_retries,
           count(*) FILTER (type = 'ContextCompacted') AS compactions,
           count(*) FILTER (type = 'UnknownEvent') AS unknown_events,
           count(*) AS events,
           max(position) AS last_position
    -- only the events whose fields are read below are parsed (~1% of them: the
    -- model calls' fields come from `_mc_rows`, below)
    FROM (SELECT * EXCLUDE (data),
                 _fields(CASE WHEN type IN ('SessionCreated', 'SessionClaimed', 'SessionCompleted',
                                            'SessionFailed')
                              THEN data END) AS f
          FROM _new)
    GROUP BY session_id
), m AS (
    -- the batch's model calls, by session: the request each call's last event
    -- names is the one pending if that event was its request
    SELECT execution_id AS id,
           max(_step_max) AS step_count,
           coalesce(sum(_input_sum), 0) AS input_tokens,
           coalesce(sum(_output_sum), 0) AS output_tokens,
           coalesce(sum(_cost_sum), 0) AS cost_usd,
           arg_max(CASE WHEN _last_requested THEN request_id ELSE '' END, _last_seq) AS pending_request
    FROM _mc_rows
    GROUP BY execution_id
), a AS (
    SELECT execution_id AS id, count(*) AS awaiting
    FROM _agent_tool_calls_open
    WHERE status = 'awaiting_review' AND execution_id IN (SELECT id FROM b)
    GROUP BY execution_id
)
SELECT b.id,
       coalesce(t.tenant, b.c.tenant) AS tenant,
       coalesce(t.agent_type, b.c.agent_type) AS agent_type,
       coalesce(t.input_data, b.c.input_data) AS input_data,
       coalesce(b.result, t.result) AS result,
       coalesce(b.error, t.error) AS error,
       greatest(coalesce(t.step_count, 0), coalesce(m.step_count, 0)) AS step_count,
       coalesce(t.input_tokens, 0) + coalesce(m.input_tokens, 0) AS input_tokens,
       coalesce(t.output_tokens, 0) + coalesce(m.output_tokens, 0) AS output_tokens,
       coalesce(t.cost_usd, 0) + coalesce(m.cost_usd, 0) AS cost_usd,
       coalesce(t.created_at, b.created_at) AS created_at,
       b.updated_at,
       coalesce(b.completed_at, t.completed_at) AS completed_at,
       coalesce(t.task_id, b.c.task_id) AS task_id,
       coalesce(t.model, b.c.model) AS model,
       coalesce(t."partition", b."partition") AS "partition",
       coalesce(b.owner, t.owner) AS owner,
       greatest(coalesce(t.epoch, 0), b.epoch) AS epoch,
       b.seq,
       coalesce(t.claims, 0) + b.claims AS claims,
       coalesce(b.ended_status, t.ended_status) AS ended_status,
       coalesce(m.pending_request, t.pending_request, '') AS pending_request,
       coalesce(t.model_retries, 0) + b.model_retries AS model_retries,
       coalesce(t.compactions, 0) + b.compactions AS compactions,
       coalesce(t.cancel_requested, false) OR b.cancel_requested AS cancel_requested,
       coalesce(t.unknown_events, 0) + b.unknown_events AS unknown_events,
       coalesce(t.events, 0) + b.events AS events,
       coalesce(t.limits, b.c.limits) AS limits,
       coalesce(t.tools, b.c.tools) AS tools,
       coalesce(t.workspace, b.c.workspace) AS workspace,
       -- an ended session leaves no call awaiting review (they are closed below)
       CASE WHEN coalesce(b.ended_status, t.ended_status) IS NULL
            THEN coalesce(a.awaiting, 0) ELSE 0 END AS awaiting_reviews,
       greatest(coalesce(t.last_position, 0), b.last_position) AS last_position
FROM b
LEFT JOIN _agent_executions_open t ON t.id = b.id
LEFT JOIN m ON m.id = b.id
LEFT JOIN a ON a.id = b.id;

DELETE FROM _agent_executions_open t USING _ex_merged b WHERE t.id = b.id;

INSERT INTO _agent_executions_open BY NAME
SELECT *,
       CASE WHEN ended_status IS NOT NULL THEN ended_status
            WHEN awaiting_reviews > 0 THEN 'awaiting_review'
            WHEN claims > 0 THEN 'running'
            ELSE 'pending' END AS status,
       input_tokens + output_tokens AS token_count,
       greatest(claims - 1, 0) AS restarts,
       json_object('task_id', task_id, 'model', model, 'owner', owner, 'epoch', epoch,
                   'seq', seq, 'pending_request', pending_request,
                   'cancel_requested', cancel_requested, 'model_retries', model_retries,
                   'compactions', compactions, 'limits', limits, 'tools', tools,
                   'workspace', workspace) AS state
FROM _ex_merged;

-- tool calls a session left open when it ended ------------------------------------
-- No event will ever finish them: a call that had not started never runs (`denied`),
-- one that was running when the session ended is `failed` (it may have had effects).
-- Applied to every session of the batch that has ended, after the batch's own tool
-- rows are in, so any split of the log into batches closes the same calls alike. An
-- error the call already had stays; the note is only where there was none (so that a
-- late event, which drops the note above, leaves the same row as a rebuild).
UPDATE _agent_tool_calls_open t
SET status = CASE WHEN t.status = 'running' THEN 'failed' ELSE 'denied' END,
    error = coalesce(t.error, 'session ' || e.ended_status
            || CASE WHEN t.status = 'running' THEN ' while the call was running'
                    ELSE ' before the call ran' END)
FROM _ex_merged e
WHERE e.id = t.execution_id
  AND e.ended_status IS NOT NULL
  AND t.status IN ('pending', 'awaiting_review', 'running');

DROP TABLE _mc_rows; DROP TABLE _tc_rows; DROP TABLE _st_rows; DROP TABLE _ex_merged;
