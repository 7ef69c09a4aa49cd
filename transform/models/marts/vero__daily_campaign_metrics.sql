select
    cast(occurred_at as date) as date_day,
    campaign_id,
    {{ vero_email_counts() }}
from {{ ref('vero__events') }}
where campaign_id is not null
group by cast(occurred_at as date), campaign_id
