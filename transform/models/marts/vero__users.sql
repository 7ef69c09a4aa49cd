with events as (
    select * from {{ ref('vero__events') }}
    where user_id is not null
),

emails as (
    select
        user_id,
        user_email,
        row_number() over (
            partition by user_id
            order by occurred_at desc, received_at desc, arrival_sequence desc
        ) as newest_first
    from events
    where user_email <> ''
),

subscription_changes as (
    select
        user_id,
        event_type,
        row_number() over (
            partition by user_id
            order by occurred_at desc, received_at desc, arrival_sequence desc
        ) as newest_first
    from events
    where event_type in ('unsubscribed', 'resubscribed')
),

{#- Within one event, an add of a tag wins over a remove of it. #}
tag_operations as (
    select
        user_id,
        occurred_at,
        received_at,
        arrival_sequence,
        'remove' as operation,
        0 as operation_order,
        {{ vero_json_array_strings("(changes -> '_tags' -> 'remove')") }} as tag
    from events
    where event_type = 'user_updated'

    union all

    select
        user_id,
        occurred_at,
        received_at,
        arrival_sequence,
        'add' as operation,
        1 as operation_order,
        {{ vero_json_array_strings("(changes -> '_tags' -> 'add')") }} as tag
    from events
    where event_type = 'user_updated'
),

newest_tag_operations as (
    select
        user_id,
        tag,
        operation,
        row_number() over (
            partition by user_id, tag
            order by occurred_at desc, received_at desc, arrival_sequence desc, operation_order desc
        ) as newest_first
    from tag_operations
),

tags as (
    select
        user_id,
        {{ vero_sorted_string_agg('tag', ',') }} as tags
    from newest_tag_operations
    where newest_first = 1
        and operation = 'add'
    group by user_id
),

activity as (
    select
        user_id,
        min(occurred_at) as first_seen_at,
        max(occurred_at) as last_seen_at,
        count(case when event_type = 'sent' then 1 end) as emails_sent,
        count(distinct case when event_type = 'opened' then {{ vero_message_or_campaign() }} end) as emails_opened,
        count(distinct case when event_type = 'clicked' then {{ vero_message_or_campaign() }} end) as emails_clicked,
        count(case when event_type = 'bounced' and lower(bounce_type) = 'hard' then 1 end) > 0 as has_hard_bounced
    from events
    group by user_id
)

select
    activity.user_id,
    emails.user_email as email,
    activity.first_seen_at,
    activity.last_seen_at,
    coalesce(subscription_changes.event_type = 'unsubscribed', false) as is_unsubscribed,
    coalesce(tags.tags, '') as tags,
    activity.emails_sent,
    activity.emails_opened,
    activity.emails_clicked,
    activity.has_hard_bounced
from activity
left join emails
    on emails.user_id = activity.user_id
    and emails.newest_first = 1
left join subscription_changes
    on subscription_changes.user_id = activity.user_id
    and subscription_changes.newest_first = 1
left join tags
    on tags.user_id = activity.user_id
