{{ config(materialized='incremental', incremental_strategy='append') }}

{#- One row per distinct event; sender retries removed (docs/models.md, "Retries"). An
    incremental run reads the arrivals at or after the newest one already kept (and, for
    user events, the window before it, to see each one's previous user event), and adds
    only events it does not hold yet: exactly the rows a full refresh would. -#}
{%- set window_minutes = var('vero_user_event_retry_window_minutes') -%}
{%- set email_event_types = vero_email_event_types() -%}
{%- set columns = [
    'arrival_id', 'received_at', 'arrival_sequence', 'event_type', 'user_id', 'user_email',
    'campaign_id', 'campaign_name', 'campaign_type', 'campaign_group', 'campaign_channel',
    'campaign_subject', 'campaign_trigger_event', 'campaign_variation', 'campaign_tags',
    'campaign_permalink', 'message_id', 'sender_ip', 'user_agent', 'bounce_type',
    'bounce_code', 'bounce_message', 'occurred_at', 'changes', 'payload',
] -%}
{%- if is_incremental() -%}
    {%- set newest_kept -%}
        (select coalesce(max(received_at), cast('1970-01-01' as {{ dbt.type_timestamp() }})) from {{ this }})
    {%- endset -%}
{%- endif %}

with arrivals as (
    select
        {{ columns | join(',\n        ') }},
        {{ dbt.hash('payload') }} as payload_hash,
        coalesce(event_type in ('{{ email_event_types | join("', '") }}'), false) as is_email_event
    from {{ ref('stg_vero__events') }}
    {% if is_incremental() -%}
    where received_at >= {{ dbt.dateadd('minute', -window_minutes, newest_kept) }}
    {%- endif %}
),

email_events as (
    select
        *,
        row_number() over (
            partition by payload_hash order by received_at, arrival_sequence
        ) as arrival_number
    from arrivals
    where is_email_event
    {%- if is_incremental() %}
        and received_at >= {{ newest_kept }}
    {%- endif %}
),

user_events as (
    select
        *,
        lag(payload_hash) over (
            partition by user_id order by received_at, arrival_sequence
        ) as previous_payload_hash,
        lag(received_at) over (
            partition by user_id order by received_at, arrival_sequence
        ) as previous_received_at
    from arrivals
    where not is_email_event
),

distinct_events as (
    select payload_hash as event_key, {{ columns | join(', ') }}
    from email_events
    where arrival_number = 1

    union all

    select {{ dbt.hash('arrival_id') }} as event_key, {{ columns | join(', ') }}
    from user_events
    where previous_payload_hash is null
        or previous_payload_hash <> payload_hash
        or received_at > {{ dbt.dateadd('minute', window_minutes, 'previous_received_at') }}
)

select
    event_key,
    {{ columns | join(',\n    ') }}
from distinct_events
{% if is_incremental() -%}
where received_at >= {{ newest_kept }}
    and not exists (
        select 1 from {{ this }} as kept where kept.event_key = distinct_events.event_key
    )
{%- endif %}
