{#-
  distmon re-run reactor: on a run with new failures, run ONLY those node ids again, on ONLY the
  minion that had them, ONCE, with the distmon returner, so the dashboard can tell a flaky test
  (passes on re-run) from a broken one (fails again). The re-run carries rerun_of=<jid>.

  Master config (docs/events.md):

    reactor:
      - 'distmon/run/*':
        - salt://reactor/distmon_rerun.sls

  The event (fired by pytestrun.run, see docs/events.md) says whether a re-run is wanted:
  never for a re-run itself (so once), never when the minion or the run turned it off
  (pytestrun.rerun_new_failures / rerun_new_failures=False), never without new failures.
  The target is the id the MASTER attached to the event (the authenticated minion), never a
  value from the event's own data.
-#}
{%- set event = data.get('data', {}) if data.get('data') is mapping else data %}
{%- set minion = data.get('id') %}
{%- set rerun = event.get('rerun', {}) if event.get('rerun') is mapping else {} %}
{%- if minion and event.get('jid') and rerun.get('wanted') and rerun.get('paths') %}
distmon_rerun_{{ event['jid'] }}:
  local.pytestrun.run:
    - tgt: {{ minion | tojson }}
    - tgt_type: list
    - ret: distmon
    - args:
      - path: {{ rerun['paths'] | tojson }}
      - rerun_of: {{ event['jid'] | tojson }}
      - saltenv: {{ rerun.get('saltenv', 'base') | tojson }}
{%- endif %}
