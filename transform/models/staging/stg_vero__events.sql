{#- One row per arrival in `data`: renamed and typed, nothing removed. `->>` is
    parenthesised everywhere: DuckDB binds it looser than `and`. -#}
with source as (
    select
        __sdc_primary_key,
        _sdc_webhook_received_at,
        _sdc_webhook_sequence,
        "type",
        "user",
        campaign,
        changes,
        message_id,
        sender_ip,
        user_agent,
        bounce_type,
        bounce_code,
        bounce_message,
        {% for event_type in vero_email_event_types() -%}
        {{ event_type }}_at,
        {% endfor -%}
        payload
    from {{ source('vero', 'data') }}
),

typed as (
    select
        __sdc_primary_key as arrival_id,
        cast(_sdc_webhook_received_at as {{ dbt.type_timestamp() }}) as received_at,
        cast(_sdc_webhook_sequence as {{ dbt.type_bigint() }}) as arrival_sequence,
        "type" as event_type,
        ("user" ->> 'id') as user_id,
        ("user" ->> 'email') as user_email,
        (campaign ->> 'id') as campaign_id,
        (campaign ->> 'name') as campaign_name,
        (campaign ->> 'type') as campaign_type,
        (campaign ->> 'group') as campaign_group,
        (campaign ->> 'channel') as campaign_channel,
        (campaign ->> 'subject') as campaign_subject,
        (campaign ->> 'trigger-event') as campaign_trigger_event,
        (campaign ->> 'variation') as campaign_variation,
        (campaign ->> 'tags') as campaign_tags,
        (campaign ->> 'permalink') as campaign_permalink,
        message_id,
        sender_ip,
        user_agent,
        bounce_type,
        bounce_code,
        bounce_message,
        case "type"
            {% for event_type in vero_email_event_types() -%}
            when '{{ event_type }}' then cast({{ event_type }}_at as {{ dbt.type_bigint() }})
            {% endfor -%}
        end as occurred_at_unix,
        changes,
        payload
    from source
)

select
    arrival_id,
    received_at,
    arrival_sequence,
    event_type,
    user_id,
    user_email,
    campaign_id,
    campaign_name,
    campaign_type,
    campaign_group,
    campaign_channel,
    campaign_subject,
    campaign_trigger_event,
    campaign_variation,
    campaign_tags,
    campaign_permalink,
    message_id,
    sender_ip,
    user_agent,
    bounce_type,
    bounce_code,
    bounce_message,
    {#- Years 1970 to 9999 only: anything else is not a time, and would stop every build. #}
    case
        when occurred_at_unix between 0 and 253402300799
            then {{ dbt.dateadd('second', 'occurred_at_unix', "cast('1970-01-01' as " ~ dbt.type_timestamp() ~ ")") }}
        else received_at
    end as occurred_at,
    changes,
    payload
from typed
