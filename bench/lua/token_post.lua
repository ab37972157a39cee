-- wrk script (issue 11, scenario 8): the token endpoint's client_credentials grant; the client's Basic
-- credentials come with -H "Authorization: Basic ...".
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=items%3Aread"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
