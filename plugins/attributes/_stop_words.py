"""The English stop-word list of the default protocol's lexical rule (`_lexical.content_tokens`).

Function words removed by the default lexical rule (the reference claims a stop-word filter
but has none). Written for this project; contractions are single tokens here.
"""

STOP_WORDS = frozenset(
    """
a about above after again against all almost also am among an and another any anybody anyone anything
are aren't around as at away back be became because become been before being below beneath beside
besides between beyond both but by can can't cannot could couldn't did didn't do does doesn't doing done
don't down during each either else enough even ever every everybody everyone everything far few for
from further get gets getting go goes going gone got had hadn't has hasn't have haven't having he he'd
he'll he's her here here's hers herself him himself his how however i i'd i'll i'm i've if in into is
isn't it it'd it'll it's its itself just least less let let's like made make many may me might mine more
most much must mustn't my myself near neither never no nobody none nor not nothing now o of off often on
once one only onto or other others ought our ours ourselves out over own per perhaps quite rather really
s said same say says shall shan't she she'd she'll she's should shouldn't since so some somebody someone
something sometimes somewhat still such t than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've thing things this those though through thus till to
together too toward towards under until up upon us very was wasn't we we'd we'll we're we've well were
weren't what what's whatever when whenever where where's whether which while who who's whom whose why
will with within without won't would wouldn't yes yet you you'd you'll you're you've your yours yourself
yourselves
""".split()
)
