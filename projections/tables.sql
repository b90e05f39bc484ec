-- fleetlog projections (SPEC §8). Disposable: every row here is a function of
-- the event log, rebuilt by `fleetlog project --rebuild`. Times are UTC.
-- Kept in step with SCHEMA_VERSION in projector.py: a file made by another
-- version is rebuilt, never migrated.

CREATE TABLE _meta (key VARCHAR PRIMARY KEY, value VARCHAR);

-- Per log partition: the last position whose events are in every table below.
-- Updated in the same transaction as the rows (exactly-once catch-up).
CREATE TABLE _checkpoints (partition INTEGER PRIMARY KEY, position BIGINT NOT NULL);

-- The whole log. `position` is per partition (HOME/log/p<partition>).
CREATE TABLE events (
    partition  INTEGER   NOT NULL,
    position   BIGINT    NOT NULL,
    session_id VARCHAR   NOT NULL,
    seq        BIGINT    NOT NULL,
    epoch      BIGINT    NOT NULL,
    type       VARCHAR   NOT NULL,
    ts         TIMESTAMP NOT NULL,
    data       JSON      NOT NULL USING COMPRESSION zstd
);

-- The folded tables come in twins, seen together through a view of the plain
-- name: `_X_open` holds the rows of the sessions the fleet is working on, and
-- `_X_ended` those of sessions that have ended or gone quiet, moved there in
-- bunches (projector.py, `_fold_new`). A catch-up round reads and rewrites only
-- `_open` rows, so its cost follows the live sessions, not the history; the
-- `_ended` tables are appended to, and only an event for a session there (a
-- late review decision, say) moves its rows back. Their rows come from the
-- `_open` twin, which checks the constraints. `moved` identifies the session
-- and where its stream stood when it moved out (partition, latest position);
-- rows are appended in its order, so DuckDB's zone maps find a session's rows
-- in a row group or two when it moves back, without scanning the history.
CREATE TABLE _agent_executions_open (
    id               VARCHAR NOT NULL,
    tenant           VARCHAR,
    agent_type       VARCHAR,
    status           VARCHAR NOT NULL,   -- SPEC §3
    input_data       VARCHAR,            -- the task's prompt, verbatim
    state            JSON,               -- owner, epoch, limits, ... (see apply.sql)
    result           VARCHAR,
    error            VARCHAR,            -- 'CODE: detail' (SPEC §3) when failed
    step_count       INTEGER NOT NULL,
    token_count      BIGINT  NOT NULL,
    input_tokens     BIGINT  NOT NULL,
    output_tokens    BIGINT  NOT NULL,
    cost_usd         DECIMAL(20, 10) NOT NULL,
    restarts         INTEGER NOT NULL,
    created_at       TIMESTAMP,
    updated_at       TIMESTAMP,
    completed_at     TIMESTAMP,
    -- more than the seed schema: what the fold of the stream knows
    task_id          VARCHAR,
    model            VARCHAR,
    "partition"      INTEGER NOT NULL,
    owner            VARCHAR,
    epoch            BIGINT  NOT NULL,
    seq              BIGINT  NOT NULL,
    claims           INTEGER NOT NULL,
    ended_status     VARCHAR,
    pending_request  VARCHAR,
    model_retries    INTEGER NOT NULL,
    compactions      INTEGER NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    unknown_events   INTEGER NOT NULL,
    events           BIGINT  NOT NULL,
    limits           JSON,
    tools            JSON,
    workspace        VARCHAR,
    awaiting_reviews INTEGER NOT NULL,
    last_position    BIGINT  NOT NULL    -- of its latest event, in its partition
);
CREATE TABLE _agent_executions_ended AS SELECT *, 0::BIGINT AS moved FROM _agent_executions_open LIMIT 0;
CREATE VIEW agent_executions AS
SELECT * EXCLUDE (moved) FROM _agent_executions_ended UNION ALL FROM _agent_executions_open;

CREATE TABLE _agent_tool_calls_open (
    id                  VARCHAR NOT NULL,  -- the model's tool_use id (CALL_ID)
    execution_id        VARCHAR NOT NULL,
    step_number         INTEGER,
    tool_name           VARCHAR,
    tool_input          VARCHAR,           -- JSON text, secrets redacted
    tool_output         VARCHAR,
    status              VARCHAR NOT NULL,  -- pending, awaiting_review, running, succeeded, failed, denied
    risk                VARCHAR,
    verdict             VARCHAR,           -- allow, ask, deny
    latency_ms          DOUBLE,
    error               VARCHAR,
    called_at           TIMESTAMP,
    -- more than SPEC §8
    reason              VARCHAR,
    rule                VARCHAR,
    in_doubt            BOOLEAN,
    reviews             INTEGER NOT NULL,  -- times sent to a human
    review_requested_at TIMESTAMP,
    reviewed_at         TIMESTAMP,
    reviewer            VARCHAR,
    review_note         VARCHAR,
    attempts            INTEGER NOT NULL,
    idempotency_key     VARCHAR,
    finished_at         TIMESTAMP
);
CREATE TABLE _agent_tool_calls_ended AS SELECT *, 0::BIGINT AS moved FROM _agent_tool_calls_open LIMIT 0;
CREATE VIEW agent_tool_calls AS
SELECT * EXCLUDE (moved) FROM _agent_tool_calls_ended UNION ALL FROM _agent_tool_calls_open;

CREATE TABLE _model_calls_open (
    execution_id      VARCHAR NOT NULL,
    step_number       INTEGER,
    model             VARCHAR,
    input_tokens      BIGINT,
    output_tokens     BIGINT,
    cache_read_tokens BIGINT,
    cost_usd          DECIMAL(20, 10),
    latency_ms        DOUBLE,
    stop_reason       VARCHAR,
    called_at         TIMESTAMP,
    -- more than SPEC §8
    request_id         VARCHAR NOT NULL,
    status             VARCHAR NOT NULL,  -- requested, responded, failed
    cache_write_tokens BIGINT,
    retries            INTEGER NOT NULL,  -- 429/5xx/529/timeouts retried
    error              VARCHAR,
    status_code        INTEGER,
    responded_at       TIMESTAMP,
    purpose            VARCHAR NOT NULL   -- '' a step of the task, 'compaction' a summary
);
CREATE TABLE _model_calls_ended AS SELECT *, 0::BIGINT AS moved FROM _model_calls_open LIMIT 0;
CREATE VIEW model_calls AS
SELECT * EXCLUDE (moved) FROM _model_calls_ended UNION ALL FROM _model_calls_open;

-- One row per step that did work: what the step-latency percentiles are taken over.
CREATE TABLE _agent_steps_open (
    execution_id VARCHAR NOT NULL,
    step_number  INTEGER NOT NULL,
    model_ms     DECIMAL(18, 6),   -- its answered model call(s)
    tool_ms      DECIMAL(18, 6),   -- its tool calls
    latency_ms   DECIMAL(18, 6) NOT NULL
);
CREATE TABLE _agent_steps_ended AS SELECT *, 0::BIGINT AS moved FROM _agent_steps_open LIMIT 0;
CREATE VIEW agent_steps AS
SELECT * EXCLUDE (moved) FROM _agent_steps_ended UNION ALL FROM _agent_steps_open;

-- Spending per tenant and agent type: what the BudgetLedger is rebuilt from.
CREATE VIEW budget_counters AS
SELECT tenant, agent_type,
       count(*)         AS sessions,
       sum(step_count)  AS steps,
       sum(token_count) AS tokens,
       sum(cost_usd)    AS cost_usd
FROM agent_executions
GROUP BY ALL;

-- Health per agent type over sessions created at or after `since`.
--   completion_rate            completed / ended (completed, failed, cancelled)
--   tool_success_rate          succeeded / calls that ran (succeeded + failed)
--   human_review_rate          calls sent to a human / all proposed calls
--   token_cost_per_completion  all spending / completed sessions
--   step latency               a step's model call + its tool calls (human waits excluded)
CREATE MACRO agent_health(since := TIMESTAMP '1970-01-01 00:00:00', agent := NULL::VARCHAR)
AS TABLE
WITH s AS (
    SELECT id, agent_type, status, step_count, cost_usd
    FROM agent_executions
    WHERE created_at >= since AND (agent IS NULL OR agent_type = agent)
),
per_agent AS (
    SELECT agent_type,
           count(*) AS sessions,
           count(*) FILTER (status = 'completed') AS completed,
           count(*) FILTER (status IN ('completed', 'failed', 'cancelled')) AS ended,
           avg(step_count) AS avg_steps,
           sum(cost_usd) AS cost
    FROM s GROUP BY agent_type
),
calls AS (
    SELECT s.agent_type,
           count(*) AS proposed,
           count(*) FILTER (c.status IN ('succeeded', 'failed')) AS ran,
           count(*) FILTER (c.status = 'succeeded') AS succeeded,
           count(*) FILTER (c.reviews > 0) AS reviewed
    FROM agent_tool_calls c JOIN s ON c.execution_id = s.id
    GROUP BY s.agent_type
),
steps AS (
    SELECT s.agent_type,
           quantile_cont(w.latency_ms::DOUBLE, 0.5) AS p50,
           quantile_cont(w.latency_ms::DOUBLE, 0.95) AS p95
    FROM agent_steps w JOIN s ON w.execution_id = s.id
    GROUP BY s.agent_type
)
SELECT a.agent_type,
       a.sessions,
       round(a.completed / nullif(a.ended, 0), 4)            AS completion_rate,
       round(a.avg_steps, 2)                                 AS avg_steps,
       round(c.succeeded / nullif(c.ran, 0), 4)              AS tool_success_rate,
       round(c.reviewed / nullif(c.proposed, 0), 4)          AS human_review_rate,
       round(a.cost / nullif(a.completed, 0), 6)::DOUBLE     AS token_cost_per_completion,
       round(st.p50, 2)                                      AS p50_step_latency_ms,
       round(st.p95, 2)                                      AS p95_step_latency_ms
FROM per_agent a
LEFT JOIN calls c USING (agent_type)
LEFT JOIN steps st USING (agent_type)
ORDER BY a.agent_type;

CREATE VIEW agent_health_metrics AS SELECT * FROM agent_health();
