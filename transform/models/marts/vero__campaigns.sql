with events as (
    select * from {{ ref('vero__events') }}
    where campaign_id is not null
),

names as (
    select
        campaign_id,
        campaign_name,
        row_number() over (
            partition by campaign_id
            order by occurred_at desc, received_at desc, arrival_sequence desc
        ) as newest_first
    from events
    where campaign_name <> ''
),

counts as (
    select
        campaign_id,
        {{ vero_email_counts() }}
    from events
    group by campaign_id
)

select
    counts.campaign_id,
    names.campaign_name,
    counts.sends,
    counts.deliveries,
    counts.opens,
    counts.unique_opens,
    counts.clicks,
    counts.unique_clicks,
    counts.bounces,
    counts.hard_bounces,
    counts.soft_bounces,
    counts.unsubscribes,
    counts.complaints,
    counts.conversions,
    {{ vero_rate('counts.deliveries', 'counts.sends') }} as delivery_rate,
    {{ vero_rate('counts.unique_opens', 'counts.deliveries') }} as open_rate,
    {{ vero_rate('counts.unique_clicks', 'counts.deliveries') }} as click_rate,
    {{ vero_rate('counts.bounces', 'counts.sends') }} as bounce_rate
from counts
left join names
    on names.campaign_id = counts.campaign_id
    and names.newest_first = 1
