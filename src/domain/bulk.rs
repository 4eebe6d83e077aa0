//! BulkCreateUsers: many creates from one stream, each refused or created
//! on its own, hashed a few items ahead and inserted in stream order.

use futures_util::{Stream, StreamExt};

use super::{DomainError, NewUser, UserId, UserService};

/// One item of a `BulkCreateUsers` stream, as it came off the wire.
#[derive(Debug, Clone)]
pub struct CreateUser {
    pub email: String,
    pub name: String,
    pub password: String,
}

/// What a bulk create did.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    /// The created users' ids, in the order their items arrived.
    pub created: Vec<UserId>,
    /// Each refused item's 0-based index and reason, in stream order. Past
    /// `bulk_max_items` the last entry is one `Overloaded` for the first
    /// item not processed.
    pub refused: Vec<(usize, DomainError)>,
}

/// Items validated and hashed ahead of the insert in a bulk create: enough
/// to keep the hashing threads busy, few enough that a client that stops
/// early wastes little work.
const BULK_LOOKAHEAD: usize = 4;

impl UserService {
    /// Creates the users of a stream, each on its own: a refused item does
    /// not stop the others. Validation and hashing (the slow part) run a few
    /// items ahead in parallel; inserts happen one by one in stream order,
    /// so with a duplicate email inside one stream the earlier item wins.
    /// Past `bulk_max_items` processing stops and earlier items stay
    /// created. A broken input stream (`Err(E)`, e.g. the client's
    /// transport) ends the call with that error.
    pub async fn bulk_create<E>(
        &self,
        items: impl Stream<Item = Result<CreateUser, E>>,
    ) -> Result<BulkOutcome, E> {
        enum Item<E> {
            Prepared(usize, Result<NewUser, DomainError>),
            OverCap(usize),
            Broken(E),
        }

        let cap = self.limits.bulk_max_items;
        let items = items
            .enumerate()
            .map(|(index, item)| async move {
                match item {
                    Err(err) => Item::Broken(err),
                    Ok(_) if index >= cap => Item::OverCap(index),
                    Ok(req) => Item::Prepared(
                        index,
                        self.prepare(&req.email, &req.name, req.password).await,
                    ),
                }
            })
            .buffered(BULK_LOOKAHEAD);
        futures_util::pin_mut!(items);

        let mut outcome = BulkOutcome::default();
        while let Some(item) = items.next().await {
            match item {
                Item::Broken(err) => return Err(err),
                Item::OverCap(index) => {
                    outcome.refused.push((
                        index,
                        DomainError::Overloaded(format!(
                            "a stream may carry at most {cap} items; items from index {index} on were not processed"
                        )),
                    ));
                    break;
                }
                Item::Prepared(index, Err(err)) => outcome.refused.push((index, err)),
                Item::Prepared(index, Ok(new_user)) => match self.insert(new_user).await {
                    Ok(user) => outcome.created.push(user.id),
                    Err(err) => outcome.refused.push((index, err)),
                },
            }
        }
        Ok(outcome)
    }
}
