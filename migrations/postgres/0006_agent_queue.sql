-- The queue of each agent: workers that serve a list of agents claim from
-- it, so a backlog of another agent's tasks is never scanned.
CREATE INDEX sched_tasks_agent_queue ON sched_tasks (agent, priority DESC, ready_at, id)
    WHERE state IN ('ready', 'failed');
