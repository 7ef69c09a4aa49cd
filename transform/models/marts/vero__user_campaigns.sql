with counts as (
    select
        user_id,
        campaign_id,
        count(case when event_type = 'sent' then 1 end) as sends,
        count(case when event_type = 'delivered' then 1 end) as deliveries,
        count(case when event_type = 'opened' then 1 end) as opens,
        count(case when event_type = 'clicked' then 1 end) as clicks,
        count(case when event_type = 'bounced' then 1 end) as bounces,
        count(case when event_type = 'unsubscribed' then 1 end) as unsubscribes,
        count(case when event_type = 'complained' then 1 end) as complaints,
        count(case when event_type = 'converted' then 1 end) as conversions
    from {{ ref('vero__events') }}
    where user_id is not null
        and campaign_id is not null
    group by user_id, campaign_id
)

select
    user_id,
    campaign_id,
    sends,
    deliveries,
    opens,
    clicks,
    bounces,
    unsubscribes,
    complaints,
    conversions,
    opens > 0 as was_opened,
    clicks > 0 as was_clicked,
    bounces > 0 as was_bounced,
    conversions > 0 as was_converted
from counts
